"""PASS 0: scan sources into the frozen manifest.

Top-down: :meth:`Scanner.run` takes the scan lock, walks every source, plans the files to read
(new paths, or paths whose size or modification time changed, or that errored last time), reads
and hashes them in committed batches, then marks vanished paths missing.

Restart safety: each batch commits the new image registrations first (one part, named by its idx
range), then the path rows (one part). A kill between the two leaves images whose paths are not
recorded; the rerun reads those files again, finds their IDs registered, and writes only the
paths. ``image_idx`` continues from the largest committed one, in the same sorted path order as an
uninterrupted run, so a killed-and-resumed scan ends with the same tables.

Memory is columnar, so that 10^7 files fit in a few GB: the walk is one Arrow table (the
listing: sorted paths of each source, in source order, with sizes and times, see
:mod:`.walk`); the plan is a DuckDB anti-join of the listing against the ``paths`` view that
returns only the listing positions of the files to read (a NumPy array); a batch's rows become
Python values only when it is read; registered image IDs are an :class:`.idset.IdSet` (~16
bytes each); vanished paths are a second DuckDB anti-join. The catalog is a snapshot taken
before any batch is written (its views read the parts listed when it opened), so both joins
see the manifest as it was when the scan began.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from exokiratory.core.catalog import Catalog
from exokiratory.core.config import Source, WorkspaceConfig
from exokiratory.core.dataset import fetch_arrow
from exokiratory.core.jobs import JobLog, JobRecord, utcnow
from exokiratory.core.layout import IMAGES, PATHS, SCAN_LOCK
from exokiratory.core.lock import LeaseLock
from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA
from exokiratory.core.manifest_cache import arrow_reader
from exokiratory.core.progress import progress_bar
from exokiratory.core.storage import Storage
from exokiratory.passes.scan.idset import IdSet, ids_from_arrow
from exokiratory.passes.scan.inspect import FileInfo, inspect_file
from exokiratory.passes.scan.walk import (
    LISTING_SCHEMA,
    SourceUnavailable,
    WalkResult,
    release_arrow_memory,
    walk_source,
)

log = logging.getLogger(__name__)

#: registered image IDs read from the catalog per Arrow batch
ID_BATCH_ROWS = 1 << 20

#: the name the listing is registered under in the catalog's DuckDB connection
_LISTING = "scan_listing"

#: listing positions of the files to read: new paths, changed size or time, errors, walk errors
_PLAN_SQL = f"""
SELECT l.ord FROM {_LISTING} l
LEFT JOIN (SELECT path, status, size_bytes, mtime_ns FROM paths) c ON c.path = l.path
WHERE c.path IS NULL OR c.status IN ('error', 'missing') OR l.walk_error IS NOT NULL
   OR c.size_bytes IS DISTINCT FROM l.size_bytes
   OR c.mtime_ns IS DISTINCT FROM l.mtime_ns
ORDER BY l.ord
"""

#: paths recorded present under a completely walked source (the parameter) and not walked now
_VANISHED_SQL = f"""
SELECT p.path, p.source, p.image_id, p.size_bytes, p.mtime_ns FROM paths p
WHERE p.status <> 'missing' AND p.source IN (SELECT unnest(?::VARCHAR[]))
  AND NOT EXISTS (SELECT 1 FROM {_LISTING} l WHERE l.path = p.path)
ORDER BY p.path
"""


@dataclass
class ScanReport:
    """What a scan did. Printed by the CLI as its summary line."""

    files_seen: int = 0
    unchanged: int = 0
    inspected: int = 0
    bytes_read: int = 0
    new_images: int = 0
    known_content: int = 0
    unreadable: int = 0
    ignored: int = 0
    errors: int = 0
    missing: int = 0
    batches: int = 0
    seconds: float = 0.0
    unavailable_sources: list[str] = field(default_factory=list)
    folder_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"scan: {self.files_seen} files seen, {self.unchanged} unchanged, {self.inspected} read "
            f"({self.bytes_read / 1e6:.1f} MB), {self.new_images} new images, "
            f"{self.known_content} paths with known content (exact duplicates or moves), "
            f"{self.unreadable} unreadable, {self.ignored} non-images ignored, {self.errors} "
            f"errors, {self.missing} newly missing, in {self.seconds:.1f}s"
        )


class _Planned(NamedTuple):
    """One file to read (Python values exist only for the batch being read)."""

    path: str
    size: int | None
    mtime_ns: int | None
    error: str | None
    source: str


@dataclass
class _Listing:
    """Every file walked, as one Arrow table: :data:`.walk.LISTING_SCHEMA` plus ``src`` (the
    position of its source in ``sources``) and ``ord`` (the row number: the plan order)."""

    table: pa.Table
    sources: list[str]

    def rows(self, ords: np.ndarray) -> list[_Planned]:
        """The rows at listing positions ``ords`` as Python values."""
        part = self.table.take(pa.array(ords, pa.int64()))
        cols = [part[c].to_pylist() for c in ("path", "size_bytes", "mtime_ns", "walk_error")]
        srcs = [self.sources[i] for i in part["src"].to_pylist()]
        return [_Planned(*row) for row in zip(*cols, srcs, strict=True)]

    def bytes_at(self, ords: np.ndarray) -> int:
        """The sum of the walked sizes at listing positions ``ords``."""
        total = pc.sum(self.table["size_bytes"].take(pa.array(ords, pa.int64()))).as_py()
        return int(total or 0)


def _listing(walked: dict[str, WalkResult | None]) -> _Listing:
    """One table of every source's listing, in source order (the order of the plan)."""
    tables: list[pa.Table] = []
    sources: list[str] = []
    for key, res in walked.items():
        if res is None or res.listing.num_rows == 0:
            continue
        src = np.full(res.listing.num_rows, len(sources), np.int32)
        tables.append(res.listing.append_column("src", pa.array(src)))
        sources.append(key)
    schema = LISTING_SCHEMA.append(pa.field("src", pa.int32()))
    table = pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
    table = table.append_column("ord", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    release_arrow_memory()  # the sources' own tables, when there were several
    return _Listing(table, sources)


class Scanner:
    def __init__(
        self,
        storage: Storage,
        config: WorkspaceConfig,
        *,
        progress: bool | None = None,
        force_lock: bool = False,
        batch_hook: Callable[[int], None] | None = None,
    ):
        self.storage = storage
        self.config = config
        self.progress = progress
        self.force_lock = force_lock
        self.batch_hook = batch_hook
        self.report = ScanReport()
        self.scan_started = utcnow()
        self._complete_sources: set[str] = set()

    # -- top level ---------------------------------------------------------------------------
    def run(self) -> ScanReport:
        if not self.config.sources:
            raise ValueError("no sources configured: add one with `exokiratory init --source DIR`")
        t0 = time.monotonic()
        lock = LeaseLock(self.storage, SCAN_LOCK, self.config.scan.lock_ttl_seconds, "scan")
        lock.acquire(force=self.force_lock)
        jobs = JobLog(self.storage, "scan", "pass0-v1", "local")
        try:
            listing = _listing(self._walk_all())
            self.report.unchanged = listing.table.num_rows
            with Catalog(self.storage) as cat:
                cat.con.register(_LISTING, listing.table)
                try:
                    todo = self._plan(cat.con)
                    gone = self._vanished(cat.con)
                finally:
                    cat.con.unregister(_LISTING)
                known, next_idx = _registered(cat.con)
            self.report.unchanged -= len(todo)
            self._process(listing, todo, known, next_idx, jobs)
            self._mark_missing(gone, jobs)
        finally:
            jobs.flush()
            lock.release()
        self.report.seconds = time.monotonic() - t0
        return self.report

    # -- walking -----------------------------------------------------------------------------
    def _walk_all(self) -> dict[str, WalkResult | None]:
        """The walk of each source; ``None`` for a source that is unavailable (nothing is
        marked)."""
        out: dict[str, WalkResult | None] = {}
        exclude = (self.storage.root,) if self.storage.is_local else ()
        with progress_bar("scan: listing", None, self.progress) as advance:
            for src in self.config.sources:
                self._walk_one(src, out, exclude, advance)
        return out

    def _walk_one(
        self,
        src: Source,
        out: dict[str, WalkResult | None],
        exclude: tuple[str, ...],
        advance: Callable[[int], None],
    ) -> None:
        """Walk one source into ``out`` (``None`` when it is unavailable: nothing is marked)."""
        key = normalise_source(src.path)
        try:
            res = walk_source(
                src.path,
                src.storage_options,
                follow_symlinks=self.config.scan.follow_symlinks,
                include_hidden=self.config.scan.include_hidden,
                exclude=exclude,
                on_folder=advance,
            )
        except SourceUnavailable as exc:
            log.warning("%s; its paths are left as they were", exc)
            self.report.unavailable_sources.append(key)
            out[key] = None
            return
        for err in res.folder_errors:
            log.warning("%s", err)
        self.report.folder_errors.extend(res.folder_errors)
        out[key] = res
        if res.complete:
            self._complete_sources.add(key)
        self.report.files_seen += res.listing.num_rows

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, con: duckdb.DuckDBPyConnection) -> np.ndarray:
        """Listing positions of the files to read, ascending (DuckDB reads the ``paths``
        view: the recorded state is never held in Python)."""
        found = fetch_arrow(con.sql(_PLAN_SQL))["ord"]
        return np.asarray(found.to_numpy(), np.int64)

    def _vanished(self, con: duckdb.DuckDBPyConnection) -> pa.Table:
        """Rows of the paths recorded present under a fully walked source, not walked now."""
        complete = sorted(self._complete_sources)
        if not complete:
            return pa.table({})
        return fetch_arrow(con.execute(_VANISHED_SQL, [complete]))

    # -- reading -----------------------------------------------------------------------------
    def _process(
        self, listing: _Listing, todo: np.ndarray, known: IdSet, next_idx: int, jobs: JobLog
    ) -> None:
        cfg = self.config.scan
        fs_by_source = {
            normalise_source(s.path): _source_fs(s.path, s.storage_options)
            for s in self.config.sources
        }

        def work(p: _Planned) -> FileInfo:
            if p.error is not None:
                return FileInfo("error", error=p.error)
            return inspect_file(p.path, fs_by_source[p.source], cfg.max_image_pixels)

        total_bytes = listing.bytes_at(todo)
        with (
            ThreadPoolExecutor(max_workers=cfg.hash_workers, thread_name_prefix="exo-hash") as pool,
            progress_bar("scan: hashing", total_bytes or None, self.progress) as advance,
        ):
            for b, ords in enumerate(_chunks(todo, cfg.batch_size)):
                started = utcnow()
                batch = listing.rows(ords)
                infos = list(pool.map(work, batch))
                next_idx, n_bytes = self._commit(batch, infos, known, next_idx)
                advance(sum(p.size or 0 for p in batch))
                jobs.add(
                    JobRecord(
                        batch=f"scan-{b:06d}",
                        status="ok",
                        n_units=len(batch),
                        n_errors=sum(1 for i in infos if i.kind == "error"),
                        bytes_written=n_bytes,
                        started_at=started,
                    )
                )
                self.report.batches += 1
                if self.batch_hook is not None:
                    self.batch_hook(b)

    def _commit(
        self,
        batch: Sequence[_Planned],
        infos: Sequence[FileInfo],
        known: IdSet,
        next_idx: int,
    ) -> tuple[int, int]:
        now = utcnow()
        new_rows: list[dict[str, Any]] = []
        path_rows: list[dict[str, Any]] = []
        for planned, info in zip(batch, infos, strict=True):
            self.report.inspected += 1
            self.report.bytes_read += info.size or 0
            image_id = info.image_id
            if info.kind == "image" and image_id is not None:
                if image_id in known:
                    self.report.known_content += 1
                else:
                    known.add(image_id)
                    new_rows.append(_image_row(image_id, next_idx, info, planned.path, now))
                    next_idx += 1
                    self.report.new_images += 1
                    self.report.unreadable += info.status == "unreadable"
            elif info.kind == "ignored":
                self.report.ignored += 1
            else:
                self.report.errors += 1
            path_rows.append(_path_row(planned, info, now))
        n_bytes = 0
        if new_rows:
            first, last = new_rows[0]["image_idx"], new_rows[-1]["image_idx"]
            table = pa.Table.from_pylist(new_rows, schema=IMAGES_SCHEMA)
            n_bytes += self.storage.write_parquet_atomic(
                f"{IMAGES}/part-{first:012d}-{last:012d}.parquet", table
            )
        if path_rows:
            n_bytes += self._write_paths(path_rows)
        return next_idx, n_bytes

    def _write_paths(self, rows: list[dict[str, Any]]) -> int:
        return self._write_paths_table(pa.Table.from_pylist(rows, schema=PATHS_SCHEMA))

    def _write_paths_table(self, table: pa.Table) -> int:
        stamp = self.scan_started.strftime("%Y%m%dT%H%M%S%f")
        name = f"{PATHS}/part-{stamp}-{time.time_ns()}-{os.getpid()}.parquet"
        return self.storage.write_parquet_atomic(name, table)

    # -- vanished files ----------------------------------------------------------------------
    def _mark_missing(self, gone: pa.Table, jobs: JobLog) -> None:
        """Write ``missing`` rows for the vanished paths (:meth:`_vanished`), in chunks."""
        n = gone.num_rows
        now = utcnow()
        chunk = max(self.config.scan.batch_size, 10000)
        for start in range(0, n, chunk):
            part = _missing_rows(gone.slice(start, chunk), now)
            written = self._write_paths_table(part)
            jobs.add(
                JobRecord(
                    batch="scan-missing", status="ok", n_units=part.num_rows, bytes_written=written
                )
            )
        self.report.missing = n


def _registered(con: duckdb.DuckDBPyConnection) -> tuple[IdSet, int]:
    """The registered image IDs, and the next ``image_idx`` (one past the largest)."""
    (largest,) = con.execute("SELECT max(image_idx) FROM images_registry").fetchall()[0]
    next_idx = 0 if largest is None else int(largest) + 1
    rel = con.sql("SELECT unhex(image_id) AS id FROM images_registry")
    return IdSet(ids_from_arrow(b.column(0)) for b in arrow_reader(rel, ID_BATCH_ROWS)), next_idx


def _path_row(planned: _Planned, info: FileInfo, now: dt.datetime) -> dict[str, Any]:
    return {
        "path": planned.path,
        "source": planned.source,
        "image_id": info.image_id,
        "size_bytes": info.size if info.size is not None else planned.size,
        "mtime_ns": planned.mtime_ns,
        "status": info.kind,
        "error": info.error if info.kind != "image" else None,
        "seen_at": now,
    }


def _missing_rows(gone: pa.Table, now: dt.datetime) -> pa.Table:
    """``missing`` rows (:data:`PATHS_SCHEMA`) for vanished paths, keeping their last state."""
    n = gone.num_rows
    columns = {
        name: gone[name].cast(PATHS_SCHEMA.field(name).type)
        for name in ("path", "source", "image_id", "size_bytes", "mtime_ns")
    }
    columns["status"] = pa.array(["missing"] * n, pa.string())
    columns["error"] = pa.nulls(n, pa.string())
    columns["seen_at"] = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(columns, schema=PATHS_SCHEMA)


def _image_row(
    image_id: str, idx: int, info: FileInfo, path: str, now: dt.datetime
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "image_idx": idx,
        "sha256": info.sha256,
        "size_bytes": info.size,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "first_path": path,
        "registered_at": now,
        "status": info.status,
        "error": info.error,
    }


def _chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def normalise_source(path: str) -> str:
    """The canonical text of a source: an absolute local path, or the full URL."""
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(root)
    return str(fs.unstrip_protocol(root.rstrip("/")))


def _source_fs(path: str, options: dict[str, Any]) -> Any | None:
    fs, _ = fsspec.core.url_to_fs(path, **options)
    return None if isinstance(fs, LocalFileSystem) else fs
