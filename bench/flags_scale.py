"""Scale benchmark of the whole flags derivation (`exokiratory run flags`), near duplicates at
the default thresholds included, on a synthetic workspace of N images.

    python bench/flags_scale.py [--images 1000000] [--images ...] [--keep DIR] [--profile]
                                [--embeddings]

The workspace has the real schemas of the manifest, `probe` and `sense` at the default batch
sizes (the generator of bench/scale_catalog.py), with the columns the flags read made
realistic: 64-bit perceptual hashes with planted near copies (2% near copies, 0.5% exact
copies of another row, as bench/neardup_scale.py), 10% text-heavy rows, grey entropy 3-8 bits.
It is compacted (`exokiratory compact`, a process of its own), then `exokiratory run flags` runs
in a fresh process: its wall seconds (imports included) and its peak RSS (``ru_maxrss`` of that
process, from ``os.wait4``). Then the flags table is checked: one row per image, the number of
near-duplicate groups and of near duplicates. ``--profile`` also runs the derivation in this
process under cProfile (after the measured run) and prints the top functions by cumulative
time. ``--embeddings``: random float16 CLIP (512) and DINOv2 (384) embeddings of every image
too (the embedding flags: semantic duplicates, k-NN outliers; at 10^6 that is 1.8 GB of
vectors, beyond the 2 GB target: use it at 10^5 and below). The load average of the machine is
printed with the numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from neardup_scale import synthetic
from scale_catalog import PASS_BATCH, Overrides, _table, build, parts

from exokiratory.api.workspace import Workspace
from exokiratory.core.dataset import PartDataset

log = logging.getLogger("flags_scale")

#: the columns of `sense` taken from bench/neardup_scale.py's synthetic rows
NEARDUP_COLUMNS = (
    "phash",
    "dhash",
    "phash_center",
    "alpha_phash",
    "text_likeness_score",
    "noise_score",
    "megapixels",
    "sharpness_score",
    "size_bytes",
)


def overrides(n: int) -> Overrides:
    """Slices of whole-collection columns: planted near copies need rows of other parts."""
    rows = synthetic(n, seed=1)
    rng = np.random.default_rng(2)
    cols: dict[str, pa.Array] = {c: rows.column(c).combine_chunks() for c in NEARDUP_COLUMNS}
    cols["entropy_score"] = pa.array((3 + 5 * rng.random(n)).astype(np.float32))

    def slicer(col: pa.Array) -> Any:
        return lambda start, m: col.slice(start, m)

    return {name: slicer(col) for name, col in cols.items()}


def add_embeddings(ws: Workspace, n: int) -> None:
    """Random float16 CLIP and DINOv2 embeddings of every image, stored as the embed passes
    store them (one model id per space, not a random-weight one): the embedding flags'
    inputs (semantic duplicates, k-NN outliers)."""
    rng = np.random.default_rng(3)
    for name in ("embed-clip", "embed-dino"):
        (p,) = ws.passes([name])
        ds = PartDataset(ws.storage, p.output_rel, p.key)  # type: ignore[attr-defined]
        model: Overrides = {"model_id": lambda start, m, v=name: pa.array([v] * m)}
        for start in range(0, n, PASS_BATCH):
            m = min(PASS_BATCH, n - start)
            ds.write_part(f"part-{start:012d}", _table(p.output_schema(), m, start, rng, model))


def cli(ws: str, *args: str) -> dict[str, float]:
    """Run ``exokiratory <args> -w ws`` in a fresh process: wall seconds and peak RSS (MB)."""
    cmd = [sys.executable, "-m", "exokiratory", *args, "-w", ws]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{out[-3000:]}")
    log.info("%s: %s", " ".join(args), out.strip()[-500:])
    return {"s": seconds, "rss_mb": usage.ru_maxrss / 1024}


def check(ws: Workspace, n: int) -> dict[str, int]:
    """One flags row per image; near-duplicate groups and members."""
    (row,) = ws.sql(
        "SELECT count(*) AS rows, count(DISTINCT image_id) AS ids, "
        "count(DISTINCT dup_group_id) AS groups, "
        "count(*) FILTER (WHERE is_near_duplicate) AS near_duplicates, "
        "count(*) FILTER (WHERE is_worth_gpu) AS worth_gpu, "
        "count(knn_distance_clip) AS with_knn_clip, count(knn_distance_dino) AS with_knn_dino, "
        "count(DISTINCT semantic_dup_group_id) AS semantic_groups FROM flags"
    ).to_pylist()
    (images,) = ws.sql("SELECT count(*) AS n FROM images").to_pylist()
    if not row["rows"] == row["ids"] == images["n"] == n:
        raise RuntimeError(f"flags rows {row} for {images['n']} images (expected {n})")
    return dict(row)


def profile(ws: Workspace, top: int = 30) -> None:
    """The derivation in this process under cProfile (the near-duplicate cache removed)."""
    from exokiratory.core.layout import FLAGS

    for rel in ws.storage.list_files(f"{FLAGS}/_neardup", ".parquet"):
        ws.storage.remove(rel)
    (d,) = ws.passes(["flags"])
    prof = cProfile.Profile()
    with ws.catalog(ws.passes()) as cat:
        prof.enable()
        table = d.derive(cat)  # type: ignore[attr-defined]
        prof.disable()
    print(f"profiled derive: {table.num_rows} rows")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def one_size(
    n: int,
    keep: Path | None,
    do_profile: bool,
    embeddings: bool,
    sizes: dict[str, int] | None = None,
) -> None:
    root = Path(tempfile.mkdtemp(dir=keep))
    try:
        t = time.perf_counter()
        ws = build(root, n, overrides(n), **(sizes or {}))
        if embeddings:
            add_embeddings(ws, n)
        print(
            f"## {n:,} images{' with embeddings' if embeddings else ''}: built in {time.perf_counter() - t:.1f} s, {parts(ws)} parts"
        )
        c = cli(ws.storage.root, "compact")
        print(f"compact: {c['s']:.1f} s, peak {c['rss_mb']:.0f} MB -> {parts(ws)} parts")
        load = os.getloadavg()
        r = cli(ws.storage.root, "run", "flags")
        after = os.getloadavg()
        rows = check(ws, n)
        print(
            f"run flags: {r['s']:.1f} s, peak {r['rss_mb']:.0f} MB; load average "
            f"{load[0]:.2f} before, {after[0]:.2f} after (1 min, 2 cores)"
        )
        print(f"flags table: {rows}")
        if do_profile:
            profile(ws)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, action="append", help="sizes (repeatable)")
    ap.add_argument("--keep", type=Path, help="build under this folder and keep it")
    ap.add_argument("--profile", action="store_true", help="also profile derive in-process")
    ap.add_argument(
        "--embeddings", action="store_true", help="CLIP and DINOv2 embeddings of every image"
    )
    ap.add_argument("--manifest-rows", type=int, help="rows per manifest part (2,000)")
    ap.add_argument("--pass-rows", type=int, help="rows per probe/sense part (256)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = {
        name: value
        for name, value in (("manifest_rows", args.manifest_rows), ("pass_rows", args.pass_rows))
        if value
    }
    for n in args.images or [1_000_000]:
        one_size(n, args.keep, args.profile, args.embeddings, sizes)


if __name__ == "__main__":
    main()
