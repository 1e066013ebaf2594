"""PASS 0 benchmark: scan hashing throughput vs ``sha256sum`` of the same files, measured in the
same run, and rescan of the unchanged collection vs the first scan.

    python bench/scan_throughput.py [--files 1500] [--stat-files 100000]

Both sides read warm files (the page cache is warmed first, and the two are alternated); the
ratio is sha256sum time / scan time (>= 0.8 required: the scan also sniffs formats, parses
headers and writes the manifest). ``--stat-files`` builds a large collection of tiny files to
measure the per-file cost of an unchanged rescan (stat only, no reads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

from _collection import build_collection

from exokiratory import Workspace
from exokiratory.core.config import ScanConfig


def all_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED; no privileges needed),
    so the next read comes from the disk, as a first scan of a new collection does."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_sha256sum(files: list[str]) -> float:
    t0 = time.perf_counter()
    # xargs batches the arguments; sha256sum is the usual single-process baseline
    subprocess.run(
        ["xargs", "-0", "sha256sum"],
        input="\0".join(files).encode(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t0


def time_scan(src: Path, work: Path, hash_workers: int) -> tuple[float, float, Workspace]:
    if work.exists():
        shutil.rmtree(work)
    ws = Workspace.init(work, [str(src)], scan=ScanConfig(hash_workers=hash_workers))
    t0 = time.perf_counter()
    ws.scan(progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = ws.scan(progress=False)
    rescan = time.perf_counter() - t0
    if rep.inspected != 0:
        raise RuntimeError("rescan read files: incremental scan is broken")
    return first, rescan, ws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--stat-files", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="evict the files from the page cache before each timed read",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exo-bench-scan-"))
    try:
        src = tmp / "src"
        nbytes = build_collection(src, args.files)
        files = all_files(src)
        print(
            f"collection: {len(files)} real-image files, {nbytes / 1e6:.0f} MB, {os.cpu_count()} cores"
        )
        time_sha256sum(files)  # warm the page cache
        base, ours1, ours4, rescans = [], [], [], []
        for r in range(args.repeats):
            if args.cold:
                evict(files)
            base.append(time_sha256sum(files))
            if args.cold:
                evict(files)
            first, rescan, _ = time_scan(src, tmp / f"ws1-{r}", 1)
            ours1.append(first)
            if args.cold:
                evict(files)
            first, rescan, _ = time_scan(src, tmp / f"ws4-{r}", 4)
            ours4.append(first)
            rescans.append(rescan)
        b, o1, o4, rs = (statistics.median(x) for x in (base, ours1, ours4, rescans))
        mb = nbytes / 1e6
        print(f"sha256sum:               {b:7.2f} s  {mb / b:7.1f} MB/s")
        print(
            f"scan, 1 hash thread:     {o1:7.2f} s  {mb / o1:7.1f} MB/s  ratio vs sha256sum {b / o1:.2f}"
        )
        print(
            f"scan, 4 hash threads:    {o4:7.2f} s  {mb / o4:7.1f} MB/s  ratio vs sha256sum {b / o4:.2f}"
        )
        print(f"rescan (unchanged):      {rs:7.3f} s  {o4 / rs:7.1f}x faster than the first scan")
        if args.stat_files:
            big = tmp / "many"
            from PIL import Image

            Image.new("RGB", (2, 2)).save(tmp / "t.png")
            data = (tmp / "t.png").read_bytes()
            for i in range(args.stat_files):
                d = big / f"d{i // 1000:04d}"
                if i % 1000 == 0:
                    d.mkdir(parents=True)
                (d / f"f{i:07d}.png").write_bytes(data + i.to_bytes(4, "little"))
            ws = Workspace.init(tmp / "wsmany", [str(big)])
            t0 = time.perf_counter()
            ws.scan(progress=False)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            ws.scan(progress=False)
            rescan = time.perf_counter() - t0
            n = args.stat_files
            print(
                f"{n} tiny files: first scan {first:.1f} s ({n / first:.0f} files/s), unchanged rescan "
                f"{rescan:.1f} s ({rescan / n * 1e6:.1f} us/file -> {rescan / n * 1e6:.0f} s per 10^6 files)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
