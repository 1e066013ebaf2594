"""Reliability: SIGKILL real ``exokiratory scan`` / ``run`` processes at random instants, rerun
until done, and check the tables equal those of an uninterrupted run (same rows, no duplicates)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.core.config import RunConfig, ScanConfig
from exokiratory.core.dataset import PartDataset
from exokiratory.core.layout import IMAGES

from .conftest import table_rows
from .corpus import make_synthetic_collection

N_FILES = 3000
pytestmark = pytest.mark.slow


def _cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "exokiratory", "-q", *args, "-w", str(ws)]


def _run_to_end(cmd: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, start_new_session=True)
    return time.monotonic() - t0


def _kill_at(cmd: list[str], delay: float, progress: Callable[[], int] | None = None) -> bool:
    """Start ``cmd`` in its own process group and SIGKILL the whole group ``delay`` seconds
    after it starts or, with ``progress``, ``delay`` seconds after ``progress()`` first grows
    (the process has committed new work). Returns True if it was still running when killed."""
    base = progress() if progress else 0
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if progress is not None:
            deadline = time.monotonic() + 120
            while progress() <= base and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _workspace(root: Path, src: Path) -> Workspace:
    return Workspace.init(
        root,
        [str(src)],
        scan=ScanConfig(batch_size=100, hash_workers=2),
        run=RunConfig(batch_size=40),
    )


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("kill") / "src"
    make_synthetic_collection(src, N_FILES, seed=3, dup_every=37)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return src


def test_sigkill_scan_then_rerun_equals_uninterrupted(tmp_path: Path, collection: Path) -> None:
    ref = _workspace(tmp_path / "ref", collection)
    _run_to_end(_cli(tmp_path / "ref", "scan"))

    ws = _workspace(tmp_path / "ws", collection)
    rng = random.Random(1234)
    partial_states = []
    images = PartDataset(ws.storage, IMAGES, ("image_id",))
    for i in range(4):
        cmd = _cli(tmp_path / "ws", "scan", "--force")
        if i == 0:  # during start-up
            killed = _kill_at(cmd, rng.uniform(0.05, 0.4))
        else:  # mid-work: a random instant after the next batch commits
            killed = _kill_at(cmd, rng.uniform(0.0, 0.3), lambda: len(images.parts()))
        partial_states.append((killed, images.read_raw(["image_id"]).num_rows))
    _run_to_end(_cli(tmp_path / "ws", "scan", "--force"))
    assert any(k and n > 0 for k, n in partial_states), partial_states  # really killed mid-work

    for name, drop in (("images", ("registered_at",)), ("paths", ("seen_at",))):
        got, want = ws.table(name), ref.table(name)
        assert table_rows(got, drop) == table_rows(want, drop), name
    raw = PartDataset(ws.storage, IMAGES, ("image_id",)).read_raw(["image_id", "image_idx"])
    assert (
        len(set(raw.column("image_id").to_pylist())) == raw.num_rows
    )  # no duplicate registrations
    assert sorted(raw.column("image_idx").to_pylist()) == list(range(raw.num_rows))
    assert ref.images().num_rows == raw.num_rows


def test_sigkill_run_then_rerun_equals_uninterrupted(tmp_path: Path, collection: Path) -> None:
    ref = _workspace(tmp_path / "ref", collection)
    _run_to_end(_cli(tmp_path / "ref", "scan"))
    _run_to_end(_cli(tmp_path / "ref", "run", "probe", "--workers", "2"))

    ws = _workspace(tmp_path / "ws", collection)
    _run_to_end(_cli(tmp_path / "ws", "scan"))
    rng = random.Random(99)
    ds = PartDataset(ws.storage, "features/probe/v1", ("image_id",))
    states = []
    for i in range(4):
        cmd = _cli(tmp_path / "ws", "run", "probe", "--workers", "2")
        if i == 0:  # during start-up
            killed = _kill_at(cmd, rng.uniform(0.05, 0.4))
        else:  # mid-work: a random instant after the next batch commits
            killed = _kill_at(cmd, rng.uniform(0.0, 0.4), lambda: len(ds.parts()))
        states.append((killed, len(ds.parts())))
    _run_to_end(_cli(tmp_path / "ws", "run", "probe", "--workers", "2"))
    assert any(k and n > 0 for k, n in states), states

    assert table_rows(ws.table("probe")) == table_rows(ref.table("probe"))
    raw = ds.read_raw(["image_id"])
    assert len(set(raw.column("image_id").to_pylist())) == raw.num_rows
