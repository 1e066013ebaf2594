"""Compaction: same rows for every reader, kill-safe, concurrent writes kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exokiratory.core.catalog import Catalog
from exokiratory.core.compact import CompactRule, compact_dataset, plan_groups
from exokiratory.core.dataset import PartDataset, is_compacted
from exokiratory.core.storage import Storage

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("value", pa.float16()),
        pa.field("error", pa.string()),
    ]
)
REL = "features/toy/v1"


def _write_parts(
    storage: Storage, rows_per_part: list[list[tuple[int, float, str | None]]]
) -> None:
    ds = PartDataset(storage, REL, ("image_id",), SCHEMA)
    for i, rows in enumerate(rows_per_part):
        t = pa.table(
            {
                "image_id": [f"id{k:04d}" for k, _, _ in rows],
                "image_idx": [k for k, _, _ in rows],
                "value": pa.array([v for _, v, _ in rows], pa.float16()),
                "error": [e for _, _, e in rows],
            }
        )
        ds.write_part(f"part-{i:06d}", t)


def _view(storage: Storage) -> list[dict]:
    cat = Catalog(storage)
    try:
        cat.define_keyed_view("toy", REL, SCHEMA, ("image_id",))
        return cat.query("SELECT * FROM toy ORDER BY image_id").to_pylist()
    finally:
        cat.close()


def _read(storage: Storage) -> list[dict]:
    t = PartDataset(storage, REL, ("image_id",), SCHEMA).read()
    return t.sort_by("image_id").to_pylist()


RULE = CompactRule.keyed(REL, ("image_id",), has_error=True)

rows_st = st.lists(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            st.sampled_from([0.5, 1.0, 2.0, -3.0]),
            st.sampled_from([None, None, "boom", "bad"]),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda r: r[0],
    ),
    min_size=2,
    max_size=9,
)


@settings(max_examples=40, deadline=None)
@given(rows=rows_st, split=st.integers(0, 8), target=st.sampled_from([600, 2000, 10**7]))
def test_compaction_keeps_exactly_the_rows_readers_keep(
    tmp_path_factory: pytest.TempPathFactory, rows: list, split: int, target: int
) -> None:
    storage = Storage(str(tmp_path_factory.mktemp("ws")))
    _write_parts(storage, rows[: split % len(rows) + 1])
    compact_dataset(storage, RULE, target_bytes=target, min_parts=2)
    # parts written after a compaction still win by the same rule
    ds = PartDataset(storage, REL, ("image_id",), SCHEMA)
    for i, part in enumerate(rows[split % len(rows) + 1 :]):
        t = pa.table(
            {
                "image_id": [f"id{k:04d}" for k, _, _ in part],
                "image_idx": [k for k, _, _ in part],
                "value": pa.array([v for _, v, _ in part], pa.float16()),
                "error": [e for _, _, e in part],
            }
        )
        ds.write_part(f"part-{split % len(rows) + 1 + i:06d}", t)
    view_before, read_before = _view(storage), _read(storage)
    compact_dataset(storage, RULE, target_bytes=target, min_parts=2)
    assert _view(storage) == view_before
    assert _read(storage) == read_before
    # and the reference: the same parts never compacted
    ref = Storage(str(tmp_path_factory.mktemp("ref")))
    _write_parts(ref, rows)
    assert _view(ref) == view_before
    assert _read(ref) == read_before


def test_types_and_part_count(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _write_parts(storage, [[(i * 10 + j, 1.0, None) for j in range(10)] for i in range(40)])
    res = compact_dataset(storage, RULE, min_parts=32)
    assert (res.parts_before, res.parts_after, res.rows_written) == (40, 1, 400)
    (part,) = storage.list_files(REL, ".parquet")
    assert is_compacted(part)
    assert storage.read_parquet(part).schema.field("value").type == pa.float16()
    # fewer small parts than min_parts: left alone
    assert compact_dataset(storage, RULE, min_parts=32).parts_before == 1


def test_plan_groups_leaves_large_parts() -> None:
    sizes = [("a", 100), ("b", 900), ("c", 100), ("d", 100), ("e", 100)]
    assert plan_groups(sizes, target_bytes=1000, min_parts=2) == [["a", "c", "d", "e"]]
    assert plan_groups(sizes, target_bytes=250, min_parts=2) == [["a", "c"], ["d", "e"]]
    assert plan_groups(sizes, target_bytes=1000, min_parts=5) == []


_KILL_SCRIPT = """
import sys, time
from exokiratory.core.compact import CompactRule, compact_dataset
from exokiratory.core.storage import Storage

class Slow(Storage):  # says when a compacted part is whole; deletes its inputs slowly
    def write_parquet_atomic(self, rel, table):
        n = super().write_parquet_atomic(rel, table)
        print("written", rel, flush=True)
        return n

    def remove(self, rel):
        super().remove(rel)
        time.sleep(0.03)

rule = CompactRule.keyed("features/toy/v1", ("image_id",), has_error=True)
compact_dataset(Slow(sys.argv[1]), rule, target_bytes=int(sys.argv[2]), min_parts=2)
print("done", flush=True)
"""


def _kill_after(storage: Storage, writes: int, delay: float) -> None:
    """Run a compaction in a process and SIGKILL it ``delay`` s after its ``writes``-th
    compacted part is whole (``writes`` 0: ``delay`` s after it starts)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, storage.root, "3000"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = 0
    while seen < writes:
        line = proc.stdout.readline()
        if not line or line.startswith("done"):
            break
        seen += line.startswith("written")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_compaction_keeps_the_tables(tmp_path: Path) -> None:
    parts = [
        [(i * 7 + j, float(j % 3), None if j % 5 else "e") for j in range(7)] for i in range(60)
    ]
    parts += [[(3, 9.0, None), (8, 9.0, "late")]]  # keys repeated in a late part
    ref = Storage(str(tmp_path / "ref"))
    _write_parts(ref, parts)
    expected = _view(ref), _read(ref)
    midway = 0
    for i, (writes, delay) in enumerate([(0, 0.2), (1, 0.0), (1, 0.05), (3, 0.04), (8, 0.01)]):
        storage = Storage(str(tmp_path / f"ws{i}"))
        _write_parts(storage, parts)
        _kill_after(storage, writes, delay)
        files = storage.list_files(REL, ".parquet")
        midway += any(map(is_compacted, files)) and not all(map(is_compacted, files))
        assert (_view(storage), _read(storage)) == expected  # readable, identical, mid-way
        compact_dataset(storage, RULE, target_bytes=3000, min_parts=2)  # the rerun
        assert (_view(storage), _read(storage)) == expected
        assert len(storage.list_files(REL, ".parquet")) < len(parts)
    assert midway >= 4, "kills should land while compacted and original parts coexist"


def _every_view(ws) -> dict[str, list]:  # type: ignore[no-untyped-def]
    out = {}
    with ws.catalog() as cat:
        for v in cat.views:
            if v == "jobs":
                continue
            t = cat.query(f'SELECT * FROM "{v}"')
            out[v] = sorted(map(repr, t.to_pylist()))
    return out


def test_workspace_compaction_changes_no_view(tmp_path: Path, photos: Path) -> None:
    from exokiratory.api.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.scan()
    ws.run(["probe", "sense"], workers=1, batch_size=1)
    before = _every_view(ws)
    status_before = ws.status().to_dict()["passes"]
    results = ws.compact()
    by_rel = {r.rel: r for r in results}
    assert by_rel["features/probe/v1"].parts_before == 5
    assert by_rel["features/probe/v1"].parts_after == 1
    assert _every_view(ws) == before
    assert ws.status().to_dict()["passes"] == status_before
    (rep,) = ws.run(["probe"], workers=1)
    assert rep.planned == 0  # nothing to redo after compaction


def test_recovered_job_records_name_the_original_batches(tmp_path: Path) -> None:
    """A run killed before its log flushed, then compacted: the log is recovered per batch."""
    from exokiratory.core.jobs import recover_jobs

    storage = Storage(str(tmp_path))
    _write_parts(
        storage, [[(i * 3 + j, 1.0, "e" if j == 0 else None) for j in range(3)] for i in range(4)]
    )
    compact_dataset(storage, RULE, min_parts=2)
    assert recover_jobs(storage, "toy", "v1", REL) == 4
    cat = Catalog(storage)
    try:
        rows = cat.query("SELECT batch, n_units, n_errors FROM jobs ORDER BY batch").to_pylist()
    finally:
        cat.close()
    assert rows == [
        {"batch": f"part-{i:06d}.parquet", "n_units": 3, "n_errors": 1} for i in range(4)
    ]
    assert recover_jobs(storage, "toy", "v1", REL) == 0  # known now


@settings(max_examples=25, deadline=None)
@given(parts=rows_st, wanted=st.lists(st.integers(0, 31), max_size=5), compact=st.booleans())
def test_a_key_lookup_gives_the_rows_of_the_view(
    tmp_path_factory: pytest.TempPathFactory,
    parts: list[list[tuple[int, float, str | None]]],
    wanted: list[int],
    compact: bool,
) -> None:
    """Catalog.keyed_rows filters the parts before the one-row-per-key rule: the same rows as
    filtering the view (superseded rows, errors, compacted parts)."""
    storage = Storage(str(tmp_path_factory.mktemp("lookup")))
    _write_parts(storage, parts)
    if compact:
        compact_dataset(storage, RULE, min_parts=2, target_bytes=1 << 30)
    ids = [f"id{k:04d}" for k in wanted]
    cat = Catalog(storage)
    try:
        cat.define_keyed_view("toy", REL, SCHEMA, ("image_id",))
        view = cat.query(
            "SELECT * FROM toy WHERE image_id IN (SELECT unnest(?)) ORDER BY image_id", [ids]
        )
        found = cat.keyed_rows("toy", "image_id", ids).sort_by("image_id")
        by_value = cat.keyed_rows("toy", "value", [0.5]).num_rows  # not a key: the view
    finally:
        cat.close()
    assert found.select(view.column_names).to_pylist() == view.to_pylist()
    assert by_value == sum(1 for r in _view(storage) if r["value"] == 0.5)


def test_streamed_compaction_keeps_exactly_the_rows_readers_keep(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups above STREAM_BYTES are compacted one part at a time: the same readers' rows."""
    from exokiratory.core import compact

    monkeypatch.setattr(compact, "STREAM_BYTES", 0)
    test_compaction_keeps_exactly_the_rows_readers_keep(tmp_path_factory)


_STREAMED_KILL_SCRIPT = _KILL_SCRIPT.replace(
    "class Slow(Storage):",
    "import exokiratory.core.compact as c\nc.STREAM_BYTES = 0\n\nclass Slow(Storage):",
).replace(
    "    def write_parquet_atomic(self, rel, table):\n"
    "        n = super().write_parquet_atomic(rel, table)",
    "    def write_parquet_stream(self, rel, schema, parts, row_group_size=None):\n"
    "        n = super().write_parquet_stream(rel, schema, parts, row_group_size)",
)


@pytest.mark.slow
def test_sigkill_during_streamed_compaction_keeps_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "write_parquet_stream" in _STREAMED_KILL_SCRIPT
    monkeypatch.setattr(sys.modules[__name__], "_KILL_SCRIPT", _STREAMED_KILL_SCRIPT)
    from exokiratory.core import compact

    monkeypatch.setattr(compact, "STREAM_BYTES", 0)  # the reruns stream too
    test_sigkill_during_compaction_keeps_the_tables(tmp_path)
