"""The stored copy of the ``images`` / ``paths`` views: used only for the manifest it was made
from, and always the same rows as the views computed from the parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa

from exokiratory.api.workspace import Workspace
from exokiratory.core.catalog import Catalog
from exokiratory.core.manifest_cache import CACHED_VIEWS, MANIFEST_CACHE, cache_rel
from exokiratory.passes.scan.scanner import Scanner


def _views(ws: Workspace) -> tuple[bool, pa.Table, pa.Table]:
    with Catalog(ws.storage) as cat:
        images = cat.query("SELECT * FROM images")
        paths = cat.query("SELECT * FROM paths ORDER BY path")
        return cat.manifest_cached, images, paths


def _computed(ws: Workspace) -> tuple[pa.Table, pa.Table]:
    """The views computed from the parts (the copy moved away and put back)."""
    cache = Path(ws.storage.path(MANIFEST_CACHE))
    aside = cache.with_name("manifest-aside")
    if cache.exists():
        cache.rename(aside)
    try:
        cached, images, paths = _views(ws)
        assert not cached
        return images, paths
    finally:
        if aside.exists():
            aside.rename(cache)


def test_scan_stores_the_views_and_they_equal_the_computed_ones(
    tmp_path: Path, photos: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.scan()
    cached, images, paths = _views(ws)
    assert cached
    assert images.num_rows > 0
    want_images, want_paths = _computed(ws)
    assert images.equals(want_images)
    assert paths.equals(want_paths)


def test_a_new_part_makes_the_copy_invisible(tmp_path: Path, photos: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.scan()
    _, before, _ = _views(ws)
    # a scan that dies before it stores the copy: new parts, the old copy still on disk
    first = sorted(p for p in photos.iterdir() if p.is_file())[0]
    shutil.copy(first, photos / "copy-of-first.png")
    (photos / first.name).unlink()
    Scanner(ws.storage, ws.config, progress=False).run()
    cached, images, paths = _views(ws)
    assert not cached
    assert images.num_rows == before.num_rows  # same bytes: same id, path moved
    assert "copy-of-first.png" in {Path(p).name for p in paths.column("path").to_pylist()}
    assert images.equals(_computed(ws)[0])
    ws.compact()  # a command that changes the manifest stores a new copy, and drops the old
    cached, images_after, paths_after = _views(ws)
    assert cached and images_after.equals(images) and paths_after.equals(paths)
    assert len(list(Path(ws.storage.path(MANIFEST_CACHE)).glob("*.parquet"))) == len(CACHED_VIEWS)


def test_half_a_copy_is_never_used(tmp_path: Path, photos: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.scan()
    with Catalog(ws.storage) as cat:
        digest = cat.manifest_digest
    # a kill between the two files: only the first one (paths) is there
    Path(ws.storage.path(cache_rel("images", digest))).unlink()
    cached, images, _ = _views(ws)
    assert not cached and images.num_rows > 0
    ws.scan()  # nothing new: the copy is written again
    assert _views(ws)[0]


def test_a_read_only_catalog_never_writes_the_copy(tmp_path: Path, photos: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    Scanner(ws.storage, ws.config, progress=False).run()
    with Catalog(ws.storage, read_only=True) as cat:
        assert not cat.store_manifest_views()
    assert not Path(ws.storage.path(MANIFEST_CACHE)).exists() or not any(
        Path(ws.storage.path(MANIFEST_CACHE)).iterdir()
    )
    assert ws.sql("SELECT count(*) AS n FROM images").column("n")[0].as_py() > 0


def test_empty_views_have_the_types_of_registered_arrow_tables(tmp_path: Path) -> None:
    """A dataset without parts is a view from SQL (no pandas import): the same column types
    DuckDB gives the Arrow schema, for every step's schemas."""
    from exokiratory.core.catalog import _no_half, empty_sql
    from exokiratory.core.jobs import JOBS_SCHEMA
    from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA

    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    schemas = [IMAGES_SCHEMA, PATHS_SCHEMA, JOBS_SCHEMA]
    for step in ws.passes():
        extra = getattr(step, "extra_schemas", dict)  # derivations' other tables
        schemas += [step.output_schema(), *extra().values()]
    con = duckdb.connect()
    for schema in schemas:
        schema = pa.schema([f.with_type(_no_half(f.type)) for f in schema])
        con.register("registered", schema.empty_table())
        want = con.sql("DESCRIBE SELECT * FROM registered").fetchall()
        got = con.sql(f"DESCRIBE SELECT * FROM {empty_sql(schema)}").fetchall()
        assert [r[:2] for r in got] == [r[:2] for r in want]
