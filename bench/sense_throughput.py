"""PASS 1 benchmark, measured in one run on the same files with the same number of processes:

1. ``exokiratory run sense`` (end to end: planning, decode, signals, hashes, Parquet writes) vs
   plain decoding of the same files to the same working size (``load_working_image`` in a
   process pool): the ratio should be <= 1.25;
2. cleanvision's ``find_issues`` on the same files (throughput ratio; skipped if not installed);
3. peak memory of a worker on very large images (``--large``).

    python bench/sense_throughput.py [--files 600] [--workers 2] [--large]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

from _collection import build_camera_collection, build_collection

from exokiratory import Workspace
from exokiratory.core.decode import WORKING_SIZE, load_working_image


def _decode_one(path: str) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    return int(load_working_image(data, WORKING_SIZE).rgb.shape[0])


def plain_decode(files: list[str], workers: int) -> float:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_one, files, chunksize=16))
    return time.perf_counter() - t0


def run_sense(src: Path, work: Path, workers: int) -> float:
    if work.exists():
        shutil.rmtree(work)
    ws = Workspace.init(work, [str(src)])
    ws.scan(progress=False)
    t0 = time.perf_counter()
    (rep,) = ws.run("sense", workers=workers, progress=False)
    elapsed = time.perf_counter() - t0
    if rep.unit_errors or rep.processed == 0:
        raise RuntimeError(f"sense failed: {rep.summary()}")
    return elapsed


def run_cleanvision(src: Path, workers: int) -> float | None:
    try:
        from cleanvision import Imagelab
    except ImportError:
        return None
    t0 = time.perf_counter()
    lab = Imagelab(data_path=str(src))
    lab.find_issues(n_jobs=workers, verbose=False)
    return time.perf_counter() - t0


def large_images(dest: Path) -> list[tuple[str, str]]:
    """Very large files: a 20000x20000 PNG (mostly flat: small on disk), a 12000x9000 JPEG."""
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True)
    out = []
    big = Image.new("RGB", (20000, 20000), (30, 90, 160))
    big.paste(
        Image.fromarray((np.random.default_rng(0).random((2000, 2000, 3)) * 255).astype("uint8")),
        (100, 100),
    )
    big.save(dest / "huge_20000x20000.png", compress_level=1)
    out.append(
        ("huge_20000x20000.png", "PNG 20000x20000 (400 Mpx; over the default 179 Mpx bomb limit)")
    )
    del big
    photo = Image.open(
        Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"
    ).convert("RGB")
    photo.resize((12000, 9000)).save(dest / "large_12000x9000.jpg", quality=90)
    out.append(("large_12000x9000.jpg", "JPEG 12000x9000 (108 Mpx)"))
    photo.resize((9000, 9000)).save(dest / "large_9000x9000.png", compress_level=1)
    out.append(("large_9000x9000.png", "PNG 9000x9000 (81 Mpx)"))
    return out


# VmHWM (peak RSS of this process image) from /proc: unlike ru_maxrss it is not inherited
# across fork + exec from the parent, which has just built the huge test images.
_RSS_CHILD = """
import os, sys
os.environ["EXOKIRATORY_PROGRESS"] = "0"
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from exokiratory import Workspace
ws = Workspace(sys.argv[1])
base = hwm()
(rep,) = ws.run("sense", workers=1)
print(base, hwm(), rep.summary())
"""


def peak_rss_of_sense(src: Path, work: Path, max_pixels: int) -> tuple[float, float, str]:
    """Peak RSS (MB) of a fresh process that runs the sense batch in-process (one worker),
    and its RSS after imports, before the batch."""
    Workspace.init(work, [str(src)])
    cfg = work / "exokiratory.yaml"
    cfg.write_text(
        cfg.read_text().replace("max_image_pixels: 178956970", f"max_image_pixels: {max_pixels}")
    )
    Workspace(work).scan(progress=False)
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(work)], capture_output=True, text=True, check=True
    ).stdout.split(" ", 2)
    return float(out[0]), float(out[1]), out[2].strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=2400)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--camera", action="store_true", help="12 Mpx camera-like JPEGs instead")
    ap.add_argument("--no-cleanvision", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exo-bench-sense-"))
    try:
        src = tmp / "src"
        if args.camera:
            nbytes = build_camera_collection(src, args.files)
            kind = "camera-like 4000x3000 JPEGs"
        else:
            nbytes = build_collection(src, args.files, max_side=args.max_side)
            kind = f"real-image files (JPEG/PNG, up to {args.max_side} px)"
        files = sorted(str(p) for p in src.rglob("*.*"))
        print(
            f"collection: {len(files)} {kind}, {nbytes / 1e6:.0f} MB; {args.workers} processes; "
            f"working size {WORKING_SIZE}"
        )
        plain_decode(files[:50], args.workers)  # warm the page cache and imports
        plain, ours = [], []
        for r in range(2):
            plain.append(plain_decode(files, args.workers))
            ours.append(run_sense(src, tmp / f"ws{r}", args.workers))
        p, o = min(plain), min(ours)
        print(f"plain decode to working size: {p:6.2f} s  {len(files) / p:6.1f} img/s")
        print(
            f"exokiratory run sense:        {o:6.2f} s  {len(files) / o:6.1f} img/s  ratio {o / p:.2f}"
        )
        if not args.no_cleanvision:
            cv = run_cleanvision(src, args.workers)
            if cv is None:
                print("cleanvision: not installed (pip install cleanvision)")
            else:
                print(
                    f"cleanvision find_issues:      {cv:6.2f} s  {len(files) / cv:6.1f} img/s  "
                    f"exokiratory is {cv / o:.1f}x faster"
                )
        if args.large:
            big = tmp / "large"
            for name, desc in large_images(big):
                one = tmp / f"one-{name}"
                one.mkdir()
                shutil.copy(big / name, one / name)
                base, peak, out = peak_rss_of_sense(one, tmp / f"wsl-{name}", 500_000_000)
                print(
                    f"sense worker on {desc}: peak RSS {peak:.0f} MB (after imports {base:.0f} MB); {out}"
                )
                shutil.rmtree(one)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
