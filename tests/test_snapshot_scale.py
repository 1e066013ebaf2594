"""Structure snapshots in bounded memory (issue 16): rows spilled, sorted on disk by DuckDB and
digested in streamed passes give the digests, the row order and the file name of the in-memory
definition (``signal_digests`` of the table sorted by (signal, key)); the readers read one
signal (only its row groups) and join two snapshots' keys in DuckDB; the clusters are read from
the derivation's parts, with the same snapshot as through the view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exokiratory.core.storage import Storage
from exokiratory.passes.stop import history as hist
from exokiratory.passes.stop.base import StopParams
from exokiratory.passes.stop.history import (
    SNAPSHOT_SCHEMA,
    History,
    SnapshotRows,
    list_snapshots,
    signal_digests,
    snapshot_digest,
    write_snapshot,
)

P = StopParams()
SIGNALS = ["caption_basis", "cluster:clip:0", "cluster:clip:1", "outlier:features", "vocab"]

row_st = st.tuples(
    st.sampled_from(SIGNALS),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=6),
    st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    st.one_of(st.none(), st.floats(allow_nan=False, width=64)),
    st.one_of(
        st.none(),
        st.lists(st.one_of(st.none(), st.floats(allow_nan=False, width=32)), max_size=3),
    ),
)


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in SNAPSHOT_SCHEMA]
    return pa.table(
        {f.name: pa.array(list(c), f.type) for f, c in zip(SNAPSHOT_SCHEMA, cols, strict=True)},
        schema=SNAPSHOT_SCHEMA,
    )


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([("signal", "ascending"), ("key", "ascending")])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(row_st, max_size=40),
    batch=st.sampled_from([2, 3, 7, 1000]),
    held=st.booleans(),
)
def test_streamed_digests_and_order_equal_the_in_memory_ones(
    rows: list[tuple[Any, ...]], batch: int, held: bool
) -> None:
    table = _table(rows)
    with pytest.MonkeyPatch.context() as mp, SnapshotRows() as spilled:
        mp.setattr(hist, "BATCH_ROWS", batch)  # batches cut signals (and the "\n" between keys)
        keep = table.filter(pa.compute.equal(table.column("signal"), "vocab")) if held else None
        rest = (
            table.filter(pa.compute.not_equal(table.column("signal"), "vocab")) if held else table
        )
        for lo in range(0, rest.num_rows, 5):  # several sources
            spilled.add(rest.slice(lo, 5))
        spilled.sort()
        if keep is not None:
            spilled.hold(keep)
        assert spilled.signals == signal_digests(_sorted(table))
        assert list(spilled.signals) == sorted(spilled.signals)
        out = list(spilled.tables())
        assert all(len(set(t.column("signal").to_pylist())) == 1 for t in out)
        got = pa.concat_tables(out) if out else SNAPSHOT_SCHEMA.empty_table()
        assert got.equals(_sorted(table))


def _rows(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = [f"{i:032x}" for i in rng.permutation(n)]
    vec = pa.array([[float(i), None] if i % 3 else None for i in range(n)], pa.list_(pa.float32()))
    return pa.concat_tables(
        [
            _table([("cluster:clip:0", k, int(rng.integers(7)), None, None) for k in keys]),
            _table([("cluster:clip:1", k, int(rng.integers(3)), None, None) for k in keys]),
            pa.table(
                {
                    "signal": ["caption_basis"] * n,
                    "key": keys,
                    "value": pa.nulls(n, pa.int64()),
                    "score": pa.array(rng.random(n)),
                    "vector": vec,
                },
                schema=SNAPSHOT_SCHEMA,
            ),
        ]
    )


def test_written_file_matches_the_in_memory_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hist, "BATCH_ROWS", 64)
    storage = Storage(tmp_path)
    table = _rows(500)
    info = write_snapshot(
        storage, table, {"m": 1}, params_digest=P.snapshot_digest(), trigger="t", run_id="r"
    )
    assert info is not None
    want = _sorted(table)
    signals = signal_digests(want)
    assert info.signals == signals
    assert info.digest == snapshot_digest(signals, {"m": 1}, P.snapshot_digest())
    assert info.rel.endswith(f"snap-000001-{info.digest}.parquet")
    pf = pq.ParquetFile(storage.path(info.rel))
    assert pf.read().equals(want)  # same rows, same order
    meta = json.loads(pf.schema_arrow.metadata[hist.META_KEY])
    assert meta["signals"] == signals and meta["trigger"] == "t"
    for i in range(pf.num_row_groups):  # one signal per row group
        stats = pf.metadata.row_group(i).column(0).statistics
        assert stats.min == stats.max
    # the same structure again: nothing written
    again = write_snapshot(
        storage, table, {"m": 1}, params_digest=P.snapshot_digest(), trigger="t", run_id="r"
    )
    assert again is None and len(list_snapshots(storage)) == 1


def test_readers_read_one_signal_and_join_in_duckdb(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    a, b = _rows(300, 0), _rows(300, 1)
    for i, t in enumerate((a, b)):
        write_snapshot(
            storage, t, {}, params_digest=P.snapshot_digest(), trigger="t", run_id=f"{i}"
        )
    history = History(storage, P.snapshot_digest())
    first, second = history.snapshots
    sig = history.signal(first, "cluster:clip:1")
    assert sig.equals(_sorted(a).filter(pa.compute.equal(_sorted(a)["signal"], "cluster:clip:1")))
    assert history.keys(second, "caption_basis") == set(b.column("key").to_pylist()[:300])
    left, right = history.joined(first, second, "cluster:clip:0")
    mem = History.of(history.snapshots, {s.rel: history.table(s) for s in history.snapshots})
    want_l, want_r = mem.joined(first, second, "cluster:clip:0")
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == sorted(
        zip(want_l.tolist(), want_r.tolist(), strict=True)
    )
    assert len(left) == 300
    # across signals of one snapshot (CLIP vs DINO in the topology evidence)
    x, y = history.joined(second, second, "cluster:clip:0", "cluster:clip:1")
    assert len(x) == len(y) == 300


def test_clusters_are_read_from_the_parts_with_the_same_snapshot(tmp_path: Path) -> None:
    import sys

    from exokiratory.api.workspace import Workspace
    from exokiratory.passes.stop import snapshot

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    import snapshot_scale

    (tmp_path / "images").mkdir()
    Workspace.init(tmp_path / "ws", [str(tmp_path / "images")])
    ws = Workspace(str(tmp_path / "ws"))
    snapshot_scale.write_clusters(ws, 2000, "v1-test")
    with ws.catalog() as cat:
        src = snapshot.clusters_source(cat, "clip")
        assert src.startswith("read_parquet(")
        info = snapshot.record_snapshot(ws.storage, cat, P, trigger="clusters-clip")
        assert info is not None
        view = cat.query(
            "SELECT 'cluster:clip:' || level::VARCHAR AS signal, image_id AS key, "
            "cluster_id::BIGINT AS value FROM clusters_clip"
        )
    want = signal_digests(_sorted(snapshot.conform([view])))
    assert {k: v for k, v in info.signals.items() if k.startswith("cluster:")} == want
    assert info.signals["outlier:clip"]["rows"] == 40  # the top 2 % of level 0


def test_a_killed_writers_spill_folder_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"{hist.SPILL_PREFIX}{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "rows.parquet").write_bytes(b"x")
    live = tmp_path / f"{hist.SPILL_PREFIX}{os.getpid()}-other"
    live.mkdir()
    with hist.SnapshotRows() as rows:
        assert os.path.dirname(rows.dir) == str(tmp_path)
        assert not stale.exists() and live.exists()
