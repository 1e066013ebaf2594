"""The flags derivation made fit for 10^6 images (bench/flags_scale.py) gives the same table:

* a stored flags table of a random workspace (unreadable images, decode errors, images never
  sensed, exact copies, near copies, text-heavy and flat images, transparency, cues) has the
  content digest the flags had before the change (:data:`GOLDEN`, computed with the code of
  before: Python row loops, whole-table casts);
* the engine's sliced write (dictionary-encoded provenance cast ``CAST_ROWS`` rows at a time)
  stores exactly the table of :func:`derive_flags` with plain strings (``Table.equals``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exokiratory.api.workspace import Workspace
from exokiratory.core.dataset import PartDataset, current_folder
from exokiratory.core.layout import FLAGS, IMAGES, PATHS
from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA
from exokiratory.engine import derive
from exokiratory.engine.flag_rules import FlagSource, feature_columns, flag_rules, load_inputs
from exokiratory.passes.flags.inputs import flags_input_sql
from exokiratory.passes.flags.neardup import (
    QUALITY_COLUMNS,
    choose_canonicals,
    connected_components,
)
from exokiratory.passes.flags.step import FlagsDerivation
from exokiratory.passes.flags.table import FLAGS_SCHEMA, derive_flags

N = 1200
#: sha256 of the stored flags table of ``_workspace`` (see :func:`_digest`), from the code of
#: before the change
GOLDEN = "134f1ed4a799db119a6d17e2fcd6ab4d06d84cb78e95a9f2ec8197ad4912091b"


def _fill(schema: pa.Schema, n: int, start: int, rng: np.random.Generator) -> dict[str, pa.Array]:
    cols: dict[str, pa.Array] = {}
    for f in schema:
        t = f.type
        if pa.types.is_boolean(t):
            cols[f.name] = pa.array(rng.random(n) < 0.1)
        elif pa.types.is_integer(t):
            cols[f.name] = pa.array(rng.integers(0, 1000, n)).cast(t)
        elif pa.types.is_floating(t):
            cols[f.name] = pa.array(rng.random(n)).cast(t)
        elif pa.types.is_timestamp(t):
            cols[f.name] = pa.array(np.full(n, 1_700_000_000_000_000, "int64")).cast(t)
        elif pa.types.is_fixed_size_list(t):
            vals = pa.array(rng.random(n * t.list_size)).cast(t.value_type)
            cols[f.name] = pa.FixedSizeListArray.from_arrays(vals, t.list_size)
        elif f.nullable:
            cols[f.name] = pa.nulls(n, t)
        else:
            cols[f.name] = pa.array([f"s{v}" for v in rng.integers(0, 50, n)], t)
    cols["image_id"] = pa.array([f"{i:032x}" for i in range(start, start + n)])
    if "image_idx" in schema.names:
        cols["image_idx"] = pa.array(np.arange(start, start + n), pa.int64())
    return cols


def _errors(n: int, rate: float, rng: np.random.Generator, text: str) -> pa.Array:
    draw = rng.random(n)
    return pa.array([text if d < rate else ("" if d < rate * 1.3 else None) for d in draw])


def _hashes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random 64-bit hashes; a tenth of the rows are near (or exact) copies of another row."""
    out = {}
    src = rng.integers(0, n, n)
    copy = rng.random(n) < 0.1
    for name, flips in (("phash", 10), ("dhash", 12), ("phash_center", 6)):
        codes = rng.integers(0, 2**64, n, dtype=np.uint64)
        bits = rng.integers(0, flips + 1, n)
        near = codes[src].copy()
        for k in range(flips):
            pos = rng.integers(0, 64, n).astype(np.uint64)
            near[bits > k] ^= np.uint64(1) << pos[bits > k]
        out[name] = np.where(copy, near, codes)
    alpha = np.where(rng.random(n) < 0.05, rng.integers(0, 2**64, n, dtype=np.uint64), 0)
    out["alpha_phash"] = alpha.astype(np.uint64)
    return out


def _sense(n: int, rng: np.random.Generator, schema: pa.Schema) -> pa.Table:
    cols = _fill(schema, n, 0, rng)
    for name, values in _hashes(n, rng).items():
        cols[name] = pa.array(values, pa.uint64())
    cols["entropy_score"] = pa.array(np.where(rng.random(n) < 0.05, 0.3, 2 + 6 * rng.random(n)))
    cols["text_likeness_score"] = pa.array(rng.random(n) * 0.5 + (rng.random(n) < 0.15))
    cols["noise_score"] = pa.array(rng.random(n) * 4 + 0.3)
    cols["width"] = pa.array(rng.integers(16, 4000, n))
    cols["height"] = pa.array(rng.integers(16, 4000, n))
    cols["n_colors"] = pa.array(rng.integers(2, 200_000, n))
    cols["megapixels"] = pa.array(rng.random(n) * 12)
    cols["size_bytes"] = pa.array(rng.integers(1000, 5_000_000, n))
    transparent = rng.random(n) < 0.1
    for c in ("brightness_p05", "brightness_p99", "entropy_score", "grayscale_score"):
        visible = pa.array(np.where(transparent, rng.random(n), np.nan), from_pandas=True)
        cols[f"visible_{c}"] = visible
    cols["transparent_fraction"] = pa.array(np.where(transparent, rng.random(n) * 1.2, 0.0))
    cols["error"] = _errors(n, 0.03, rng, "DecodeError: truncated")
    table = pa.table({f.name: cols[f.name] for f in schema})
    return table.cast(schema)


def _workspace(root: Path, seed: int = 0) -> Workspace:
    """Random manifest, probe, sense and cues parts of ``N`` images (the last 5% never
    sensed, some never probed)."""
    src = root / "images"
    src.mkdir(parents=True)
    ws = Workspace.init(root / "ws", [str(src)])
    rng = np.random.default_rng(seed)
    images = _fill(IMAGES_SCHEMA, N, 0, rng)
    unreadable = rng.random(N) < 0.03
    images["status"] = pa.array(np.where(unreadable, "unreadable", "ok"))
    images["error"] = pa.array([("OSError: gone" if u else None) for u in unreadable])
    images["first_path"] = pa.array([f"/img/{i}.jpg" for i in range(N)])
    paths = _fill(PATHS_SCHEMA, N, 0, rng)
    paths["path"] = pa.array([f"/img/{i}.jpg" for i in range(N)])
    paths["image_id"] = images["image_id"]
    paths["status"] = pa.array(["image"] * N)
    paths["source"] = pa.array(["src"] * N)
    twins = _fill(PATHS_SCHEMA, 40, 0, rng)  # exact duplicates: a second path
    twins.update(
        path=pa.array([f"/img/copy-{i}.jpg" for i in range(40)]),
        image_id=images["image_id"].slice(0, 40),
        status=pa.array(["image"] * 40),
        source=pa.array(["src"] * 40),
    )
    for k, start in enumerate(range(0, N, 500)):
        part = {c: v.slice(start, 500) for c, v in images.items()}
        ws.storage.write_parquet_atomic(
            f"{IMAGES}/part-{k:04d}.parquet", pa.table(part).cast(IMAGES_SCHEMA)
        )
        part = {c: v.slice(start, 500) for c, v in paths.items()}
        ws.storage.write_parquet_atomic(
            f"{PATHS}/part-{k:04d}.parquet", pa.table(part).cast(PATHS_SCHEMA)
        )
    ws.storage.write_parquet_atomic(
        f"{PATHS}/part-twins.parquet", pa.table(twins).cast(PATHS_SCHEMA)
    )
    _write_pass(ws, "sense", _sense(N, rng, _schema(ws, "sense")).slice(0, N * 95 // 100))
    probe = pa.table(_fill(_schema(ws, "probe"), N, 0, rng))
    probe = probe.set_column(
        probe.schema.get_field_index("error"), "error", _errors(N, 0.03, rng, "Probe: bad")
    )
    _write_pass(ws, "probe", probe.slice(0, N - 30).cast(_schema(ws, "probe")))
    cues = pa.table(_fill(_schema(ws, "cues"), N, 0, rng)).take(np.arange(0, N, 3))
    _write_pass(ws, "cues", cues.cast(_schema(ws, "cues")))
    return ws


def _schema(ws: Workspace, name: str) -> pa.Schema:
    (p,) = ws.passes([name])
    return p.output_schema()


def _write_pass(ws: Workspace, name: str, table: pa.Table) -> None:
    (p,) = ws.passes([name])
    ds = PartDataset(ws.storage, p.output_rel, p.key)  # type: ignore[attr-defined]
    for start in range(0, table.num_rows, 256):
        ds.write_part(f"part-{start:06d}", table.slice(start, 256))


def _stored_flags(ws: Workspace) -> pa.Table:
    folder = current_folder(ws.storage, FLAGS)
    assert folder is not None
    files = sorted(ws.storage.list_files(folder, ".parquet"))
    return pa.concat_tables([ws.storage.read_parquet(f) for f in files])


def _digest(table: pa.Table) -> str:
    """sha256 of the rows (JSON, keys sorted; floats as their repr), flags_version left out
    (it names the version) and the params as parsed JSON."""
    h = hashlib.sha256(json.dumps(table.schema.names).encode())
    for row in table.drop_columns(["flags_version"]).to_pylist():
        row["flags_params"] = json.loads(row["flags_params"])
        h.update(json.dumps(row, sort_keys=True, default=repr).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = _workspace(tmp_path_factory.mktemp("flags"))
    ws.run(["flags"])
    return ws


def test_the_flags_of_a_random_workspace_are_those_of_before(flagged: Workspace) -> None:
    table = _stored_flags(flagged)
    assert table.schema.equals(FLAGS_SCHEMA)
    assert table.num_rows == N
    assert table.column("is_near_duplicate").to_numpy().sum() > 20
    assert table.column("is_corrupt").to_numpy().sum() > 50
    assert _digest(table) == GOLDEN


def test_the_sliced_write_stores_the_table_of_plain_strings(
    flagged: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(derive, "CAST_ROWS", 100)
    (step,) = flagged.passes(["flags"])
    d = cast(FlagsDerivation, step)
    rules = flag_rules()
    with flagged.catalog(flagged.passes()) as cat:
        t = cat.query(flags_input_sql(feature_columns(rules)))
        source = FlagSource(cat, t["image_id"], d.dataset, d.inputs, d.params)
        inputs = load_inputs(rules, source)
        plain = derive_flags(t, d.params, d.full_version, inputs)
        compact = d.derive(cat)
    assert plain.schema.equals(FLAGS_SCHEMA)
    assert not compact.schema.equals(FLAGS_SCHEMA)  # the provenance is dictionary-encoded
    derive._write_table(flagged.storage, "written", compact, FLAGS_SCHEMA)
    (rel,) = flagged.storage.list_files("written", ".parquet")
    stored = flagged.storage.read_parquet(rel)
    assert pq.ParquetFile(flagged.storage.path(rel)).num_row_groups == -(-N // 100)
    assert stored.equals(plain)
    assert stored.equals(_stored_flags(flagged))


def _old_choose_canonicals(
    ids: np.ndarray, labels: np.ndarray, quality: dict[str, np.ndarray]
) -> np.ndarray:
    """The canonical choice as it was (one lexsort over every row): the oracle."""
    keys = [np.where(np.isnan(quality[c]), np.inf, -quality[c]) for c in QUALITY_COLUMNS]
    id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")
    order = np.lexsort((id_rank, *reversed(keys), labels))
    first = np.ones(order.size, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    canon_of_label = np.empty(ids.size, dtype=np.int64)
    canon_of_label[labels[order][first]] = order[first]
    return canon_of_label[labels]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canonicals_of_the_groups_only_are_those_of_the_whole_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    ids = np.array([f"{v:08x}" for v in rng.permutation(10 * n)[:n]])
    i, j = rng.integers(0, n, 600), rng.integers(0, n, 600)
    labels = connected_components(n, i, j)
    quality = {c: rng.integers(0, 3, n).astype(float) for c in QUALITY_COLUMNS}
    quality["megapixels"][rng.random(n) < 0.2] = np.nan  # ties and missing values
    expected = _old_choose_canonicals(ids, labels, quality)
    assert np.array_equal(choose_canonicals(ids, labels, quality), expected)
    assert np.array_equal(choose_canonicals(pa.array(ids), labels, quality), expected)


def test_the_near_duplicate_search_reads_its_columns_before_the_input_table(
    flagged: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10^7 images the search peaks alone: it is an early input that reads the
    near-duplicate columns only and fills the cache before the whole input table is read."""
    from exokiratory.passes.flags import flag_rules as nd

    seen: list[list[str]] = []
    real = nd.NearDupSearch.of
    queries: list[str] = []

    def spy(t: pa.Table, sensed: np.ndarray, p: nd.NearDupParams) -> nd.NearDupSearch:
        seen.append(t.column_names)
        return real(t, sensed, p)

    monkeypatch.setattr(nd.NearDupSearch, "of", spy)
    (step,) = flagged.passes(["flags"])
    d = cast(FlagsDerivation, step)
    with flagged.catalog(flagged.passes()) as cat:
        for old in cat.storage.list_files(f"{d.dataset}/_neardup", ".parquet"):
            cat.storage.remove(old)
        query = cat.query
        monkeypatch.setattr(cat, "query", lambda sql, *a: queries.append(sql) or query(sql, *a))
        table = d.derive(cat)
    (columns,) = seen
    narrow = {"image_id", "image_idx", "status", "scan_error", "n_paths", "sense_error"}
    assert set(columns) == narrow | {"entropy_score", *nd.NEARDUP_FEATURES}
    near = queries.index(flags_input_sql(nd.NEARDUP_FEATURES))
    assert near < queries.index(flags_input_sql(feature_columns(flag_rules())))
    assert _digest(table.cast(FLAGS_SCHEMA)) == GOLDEN
