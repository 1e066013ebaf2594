"""Memory and time of ``exokiratory scan`` as the collection grows (issue: every command within
8 GB at 10^7 images).

    python bench/scan_scale.py --files 100000 --files 300000 [--keep DIR]

Builds N tiny distinct files (a few bytes each, in folders of 1,000: not images, so every file
is hashed, sniffed and recorded with its error, which is the per-file bookkeeping a real scan
does without the pixel reading), then runs ``exokiratory scan`` twice in fresh processes: the
first scan (every file new) and a rescan (nothing changed: stat only). Reported: wall seconds and
peak RSS (``ru_maxrss`` from ``os.wait4``) of each, and the memory per file between two sizes
(the slope that projects to 10^7).

``--phases`` runs each scan as the steps of ``Workspace.scan`` in a child process (the scanner,
then the manifest's automatic compaction, then storing the manifest views) and adds the peak RSS
after each step (``VmHWM``), which says where a command's memory goes. To prove a bound, run the
bench from a shell inside a memory cgroup (e.g. ``echo $$ > .../memory/<group>/cgroup.procs``):
a scan that exceeds the limit is killed and the bench fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PER_FOLDER = 1000


def make_files(root: Path, n: int) -> None:
    for lo in range(0, n, PER_FOLDER):
        folder = root / f"d{lo // PER_FOLDER:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(lo, min(n, lo + PER_FOLDER)):
            (folder / f"f{i:08d}.jpg").write_bytes(f"not an image {i}".encode())


def timed(cmd: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-2000:]}")
    res: dict[str, Any] = {
        "s": round(time.perf_counter() - t, 1),
        "rss_mb": round(usage.ru_maxrss / 1024),
    }
    last = out.strip().splitlines()[-1:] if out.strip() else []
    if last and last[0].startswith("{"):  # a --phase-child's peaks
        res["peak_mb_after"] = json.loads(last[0])
    return res


def _peak_mb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024
    return -1


def phase_child(ws_dir: str) -> None:
    """The steps of ``Workspace.scan``, printing the peak RSS after each (one JSON line)."""
    from exokiratory import Workspace
    from exokiratory.engine.compaction import MANIFEST_RULES
    from exokiratory.passes.scan.scanner import Scanner

    ws = Workspace(ws_dir)
    peaks = {"start": _peak_mb()}
    Scanner(ws.storage, ws.config, progress=False).run()
    peaks["scanner"] = _peak_mb()
    ws._auto_compact(MANIFEST_RULES)
    peaks["compaction"] = _peak_mb()
    ws._store_manifest_views()
    peaks["stored_views"] = _peak_mb()
    print(json.dumps(peaks), flush=True)


def one(n: int, keep: Path | None, phases: bool = False) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(dir=keep))
    try:
        t = time.perf_counter()
        make_files(root / "images", n)
        made = time.perf_counter() - t
        exe = [sys.executable, "-m", "exokiratory"]
        ws = str(root / "ws")
        subprocess.run(
            [*exe, "init", ws, "--source", str(root / "images")], check=True, capture_output=True
        )
        scan = (
            [sys.executable, __file__, "--phase-child", ws] if phases else [*exe, "scan", "-w", ws]
        )
        first = timed(scan)
        again = timed(scan)
        return {"files": n, "made_s": round(made, 1), "scan": first, "rescan": again}
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, action="append")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--phases", action="store_true", help="peak RSS after each step of a scan")
    ap.add_argument("--phase-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")
    if args.phase_child:
        phase_child(args.phase_child)
        return
    results = [one(n, args.keep, args.phases) for n in args.files or [100_000]]
    for r in results:
        print(json.dumps(r), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        for step in ("scan", "rescan"):
            project(step, a["files"], b["files"], a[step]["rss_mb"], b[step]["rss_mb"])
            if "peak_mb_after" in a[step]:  # the scanner alone (before compaction, views)
                pa_, pb = a[step]["peak_mb_after"], b[step]["peak_mb_after"]
                for phase in ("scanner", "compaction", "stored_views"):
                    project(f"  {step} to {phase}", a["files"], b["files"], pa_[phase], pb[phase])


def project(label: str, n_a: int, n_b: int, mb_a: float, mb_b: float) -> None:
    """The memory per file between two sizes, and the peak it projects at 10^7 files."""
    slope = (mb_b - mb_a) / (n_b - n_a)
    print(
        f"{label}: {slope * 1e3:.2f} MB per 1,000 files; projected at 10^7: "
        f"{(mb_a + slope * (1e7 - n_a)) / 1024:.1f} GB",
        flush=True,
    )


if __name__ == "__main__":
    main()
