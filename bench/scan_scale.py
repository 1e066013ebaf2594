"""Memory and time of ``exokiratory scan`` as the collection grows (issue: every command within
8 GB at 10^7 images).

    python bench/scan_scale.py --files 100000 --files 300000 [--keep DIR]

Builds N tiny distinct files (a few bytes each, in folders of 1,000: not images, so every file
is hashed, sniffed and recorded with its error, which is the per-file bookkeeping a real scan
does without the pixel reading), then runs ``exokiratory scan`` twice in fresh processes: the
first scan (every file new) and a rescan (nothing changed: stat only). Reported: wall seconds and
peak RSS (``ru_maxrss`` from ``os.wait4``) of each, and the memory per file between two sizes
(the slope that projects to 10^7).
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
    return {"s": round(time.perf_counter() - t, 1), "rss_mb": round(usage.ru_maxrss / 1024)}


def one(n: int, keep: Path | None) -> dict[str, Any]:
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
        first = timed([*exe, "scan", "-w", ws])
        again = timed([*exe, "scan", "-w", ws])
        return {"files": n, "made_s": round(made, 1), "scan": first, "rescan": again}
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, action="append")
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")
    results = [one(n, args.keep) for n in args.files or [100_000]]
    for r in results:
        print(json.dumps(r), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        for step in ("scan", "rescan"):
            slope = (b[step]["rss_mb"] - a[step]["rss_mb"]) / (b["files"] - a["files"])
            print(
                f"{step}: {slope * 1e3:.2f} MB per 1,000 files; projected at 10^7: "
                f"{(a[step]['rss_mb'] + slope * (1e7 - a['files'])) / 1024:.1f} GB",
                flush=True,
            )


if __name__ == "__main__":
    main()
