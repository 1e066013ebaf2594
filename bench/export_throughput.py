"""Export benchmark: images/s of each export format vs a plain file copy of the same files.

    python bench/export_throughput.py [--files 600] [--repeat 2]

A collection of real photos (re-encoded crops, ``_collection.build_collection``) is scanned into
a workspace and sampled whole (uniform); then each format exports that sample into a fresh
folder, and the baseline copies the same files with ``shutil.copyfile`` into a fresh folder.
Files are warm (read once first); every figure is the best of ``--repeat`` runs. Export times
include the selection query, the shard writes (fsync'd, renamed into place) and the log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

from _collection import build_collection

from exokiratory import Workspace

FORMATS = (
    ("manifest", {}),
    ("files (symlinks)", {"to": "files"}),
    ("files (copies)", {"to": "files", "mode": "copy"}),
    ("webdataset", {"to": "webdataset"}),
    ("hf", {"to": "hf"}),
)


def plain_copy(files: list[str], dest: Path) -> float:
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        shutil.copyfile(f, dest / f"{i:06d}{Path(f).suffix}")
    return time.perf_counter() - t0


def timed_export(ws: Workspace, dest: Path, options: dict[str, str]) -> float:
    t0 = time.perf_counter()
    rep = ws.export(str(dest), sample="all", **{"to": "manifest", **options})  # type: ignore[arg-type]
    if rep.n_problems:
        raise RuntimeError(rep.summary())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_bytes = build_collection(root / "src", args.files)
        files = sorted(str(p) for p in (root / "src").rglob("*") if p.is_file())
        for f in files:  # warm the page cache
            Path(f).read_bytes()
        ws = Workspace.init(root / "ws", [str(root / "src")])
        ws.scan(progress=False)
        ws.sample("all", len(files), rule="uniform")
        print(f"{len(files)} files, {n_bytes / 1e6:.1f} MB")
        base = min(plain_copy(files, root / f"copy{r}") for r in range(args.repeat))
        print(f"| plain file copy | {len(files) / base:.0f} images/s | {base:.2f} s | 1.00 |")
        for label, options in FORMATS:
            t = min(
                timed_export(ws, root / f"{label.replace(' ', '_')}-{r}", options)
                for r in range(args.repeat)
            )
            print(f"| {label} | {len(files) / t:.0f} images/s | {t:.2f} s | {base / t:.2f} |")


if __name__ == "__main__":
    main()
