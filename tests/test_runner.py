from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from exokiratory import Workspace
from exokiratory.core.catalog import Catalog
from exokiratory.core.dataset import PartDataset
from exokiratory.engine.batch import OutputContractError, compute_batch
from exokiratory.engine.executors import LocalExecutor
from exokiratory.engine.planner import plan
from exokiratory.engine.run import run_pass
from exokiratory.engine.step import BatchContext, ImagePass


class FlakyPass(ImagePass):
    """Fails for images whose id starts with a hex digit in ``bad``; counts calls."""

    name = "flaky"
    dataset = "features/flaky"
    version = "v1"
    bad = "0123"
    calls: list[str] = []

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("image_id", pa.string()),
                ("image_idx", pa.int64()),
                ("n", pa.int64()),
                ("error", pa.string()),
            ]
        )

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        FlakyPass.calls.append(unit["image_id"])
        if unit["image_id"][0] in self.bad:
            raise ValueError("synthetic failure")
        return {"n": int(unit["image_id"][:4], 16)}


class BrokenBatchPass(FlakyPass):
    """A batch function that fails for any batch holding a bad unit (not per image)."""

    name = "broken-batch"
    dataset = "features/broken"

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        if any(i[0] in self.bad for i in units.column("image_id").to_pylist()):
            raise RuntimeError("whole batch failed")
        return super().process_batch(units, ctx)


class WrongKeysPass(FlakyPass):
    name = "wrong"
    dataset = "features/wrong"

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        return super().process_batch(units.slice(0, 1), ctx)


@pytest.fixture
def many(tmp_path: Path) -> Workspace:
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(40):
        Image.new("RGB", (8 + i, 8), (i * 5 % 255, 7 * i % 255, 100)).save(src / f"{i:03d}.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)])
    ws.scan()
    return ws


def _run(ws: Workspace, p: ImagePass, **kw: Any):  # type: ignore[no-untyped-def]
    kw.setdefault("batch_size", 7)
    return run_pass(p, ws.storage, ws.batch_context(), LocalExecutor(1), **kw)


def test_resume_processes_only_missing_units(many: Workspace) -> None:
    p = FlakyPass()
    p.bad = ""
    FlakyPass.calls = []
    r1 = _run(many, p, limit=15)
    assert r1.processed == 15
    r2 = _run(many, p)
    assert r2.already_done == 15 and r2.processed == 25
    assert len(FlakyPass.calls) == 40 == len(set(FlakyPass.calls))
    r3 = _run(many, p)
    assert r3.planned == 0


def test_unit_errors_are_rows_and_retry_errors_recomputes_them(many: Workspace) -> None:
    p = FlakyPass()
    rep = _run(many, p)
    assert rep.ok and rep.unit_errors > 0
    with Catalog(many.storage, [p]) as cat:
        errs = cat.query("SELECT image_id, error FROM flaky WHERE error IS NOT NULL").to_pylist()
    assert errs and all(
        e["image_id"][0] in "0123" and "synthetic failure" in e["error"] for e in errs
    )
    assert _run(many, p).planned == 0  # errors are not retried by default
    p.bad = ""
    rep = _run(many, p, retry_errors=True)
    assert rep.planned == len(errs)
    with Catalog(many.storage, [p]) as cat:
        assert cat.scalar("SELECT count(*) FROM flaky WHERE error IS NULL") == 40
        assert cat.scalar("SELECT count(*) FROM flaky") == 40


def test_failing_batch_function_is_isolated_unit_by_unit(many: Workspace) -> None:
    p = BrokenBatchPass()
    rep = _run(many, p)
    assert rep.ok
    with Catalog(many.storage, [p]) as cat:
        rows = cat.query("SELECT image_id, error FROM broken_batch").to_pylist()
    assert len(rows) == 40
    for r in rows:
        assert (r["error"] is not None) == (r["image_id"][0] in "0123")


def test_output_contract_is_enforced(many: Workspace) -> None:
    p = WrongKeysPass()
    with Catalog(many.storage, [p]) as cat:
        pl = plan(p, cat, batch_size=5)
    batch = next(pl.batches())
    with pytest.raises(OutputContractError, match="one to one"):
        compute_batch(p, many.batch_context(), batch.units)
    rep = _run(many, p)
    assert rep.batches_failed > 0 and not rep.ok


def _part_digests(ws: Workspace, rel: str) -> dict[str, str]:
    root = Path(ws.storage.root) / rel
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.glob("*.parquet"))
    }


def test_process_pool_writes_byte_identical_parts(many: Workspace, tmp_path: Path) -> None:
    many.run("probe", workers=1, batch_size=6)
    one = _part_digests(many, "features/probe/v1")
    for f in (Path(many.storage.root) / "features/probe/v1").glob("*.parquet"):
        f.unlink()
    many.run("probe", workers=2, batch_size=6)
    assert _part_digests(many, "features/probe/v1") == one


def test_planning_is_deterministic(many: Workspace) -> None:
    p = FlakyPass()
    with Catalog(many.storage, [p]) as cat:
        a = [b.name for b in plan(p, cat, batch_size=6).batches()]
        b = [b.name for b in plan(p, cat, batch_size=6).batches()]
    assert a == b and len(a) == 7


def test_two_concurrent_runners_do_not_duplicate(many: Workspace) -> None:
    """Two kernels on one workspace: rows never duplicate; identical parts replace each other."""
    root = many.storage.root
    code = textwrap.dedent(
        f"""
        from exokiratory import Workspace
        Workspace({root!r}).run("probe", workers=1, batch_size=3, progress=False)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ds = PartDataset(many.storage, "features/probe/v1", ("image_id",))
    raw = ds.read_raw()
    assert raw.num_rows == 40  # same-named parts overwrote each other with identical rows
    assert len(set(raw.column("image_id").to_pylist())) == 40
    assert many.sql("SELECT count(*) AS n FROM probe").to_pylist() == [{"n": 40}]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_matches_local_byte_for_byte(many: Workspace) -> None:
    pytest.importorskip("ray")
    many.run("probe", workers=1, batch_size=6)
    local = _part_digests(many, "features/probe/v1")
    for f in (Path(many.storage.root) / "features/probe/v1").glob("*.parquet"):
        f.unlink()
    try:
        reports = many.run("probe", engine="ray", workers=2, batch_size=6)
    finally:
        import ray

        ray.shutdown()
    assert reports[0].processed == 40
    assert _part_digests(many, "features/probe/v1") == local
    jobs = many.sql("SELECT DISTINCT engine FROM jobs WHERE pass_name = 'probe'").to_pylist()
    assert {j["engine"] for j in jobs} == {"local", "ray"}


def test_prefetched_reads_keep_order_and_read_errors_are_rows(many: Workspace) -> None:
    paths = many.sql("SELECT first_path FROM images ORDER BY image_idx").to_pylist()
    Path(paths[5]["first_path"]).unlink()  # vanishes between scan and run
    (rep,) = many.run("probe", workers=1, batch_size=40)
    assert rep.processed == 40 and rep.unit_errors == 1
    rows = many.sql("SELECT image_idx, width, error FROM probe ORDER BY image_idx").to_pylist()
    assert [r["image_idx"] for r in rows] == list(range(40))
    assert "FileNotFoundError" in rows[5]["error"]
    assert [r["width"] for r in rows if r["error"] is None] == [8 + i for i in range(40) if i != 5]


def test_status_lists_newest_errors_first(many: Workspace) -> None:
    paths = [
        r["first_path"]
        for r in many.sql("SELECT first_path FROM images ORDER BY image_idx").to_pylist()
    ]
    Path(paths[30]).unlink()
    many.run("probe", workers=1, batch_size=10, limit=20)  # first 20: no errors
    many.run("probe", workers=1, batch_size=10)  # 20..39: one error
    Path(paths[3]).unlink()
    many.run("probe", workers=1, retry_errors=True)  # only the errored unit is retried
    st = next(p for p in many.status().passes if p.name == "probe")
    assert st.failed == 1 and len(st.recent_errors) == 1
    assert "FileNotFoundError" in st.recent_errors[0][1]
