"""Scale benchmark of the hash near duplicates: the flags' near-duplicate rule at its default
thresholds (no cap) on synthetic 64-bit hashes with planted near-duplicate groups.

    python bench/neardup_scale.py --images 100000 --images 1000000 [--old-upto 100000]

For each size, in a fresh Python process each (time of the operation after the data is built,
peak RSS of that process):

* ``search``: one hash at t=12 (:func:`hamming_pairs`, the new pigeonhole-block search) and, up
  to ``--old-upto`` images, the old multi-index hashing (:func:`mih_pairs`): time and pairs;
* ``rule``: the whole near-duplicate flag rule (``near_duplicate_columns``: the loose rule
  between photos, the strict rule for text-heavy / flat images, the alpha check, groups and
  canonicals, the columns of every row) with the default ``FlagsParams``; up to ``--old-upto``
  also with the old search, and the two outputs compared.

Synthetic rows: uniform random phash / dhash / phash_center; 2% of the rows are near copies of
another row (phash 0-12 bits flipped, dhash 0-16, phash_center 0-8), 0.5% exact copies; 10%
text-heavy; alpha hash 0 (opaque).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

FLIPS = {"phash": 12, "dhash": 16, "phash_center": 8}


def _flip(codes: np.ndarray, max_bits: int, rng: np.random.Generator) -> np.ndarray:
    out = codes.copy()
    bits = rng.integers(0, max_bits + 1, codes.size)
    for k in range(max_bits):
        pos = rng.integers(0, 64, codes.size).astype(np.uint64)
        use = bits > k
        out[use] ^= np.uint64(1) << pos[use]
    return out


def synthetic(n: int, seed: int = 0) -> pa.Table:
    """n rows with the flag rule's input columns, near copies planted."""
    rng = np.random.default_rng(seed)
    n_near, n_same = n // 50, n // 200
    base = n - n_near - n_same
    cols: dict[str, Any] = {}
    src_near = rng.integers(0, base, n_near)
    src_same = rng.integers(0, base, n_same)
    for name, bits in FLIPS.items():
        codes = rng.integers(0, 2**64, base, dtype=np.uint64)
        cols[name] = np.concatenate([codes, _flip(codes[src_near], bits, rng), codes[src_same]])
    return pa.table(
        {
            "image_id": [f"img{k:08d}" for k in range(n)],
            **{k: pa.array(v, pa.uint64()) for k, v in cols.items()},
            "alpha_phash": pa.array(np.zeros(n, np.uint64), pa.uint64()),
            "text_likeness_score": rng.random(n) * 0.5 + (rng.random(n) < 0.1),
            "noise_score": rng.random(n) * 5 + 0.7,
            "megapixels": rng.random(n) * 12,
            "sharpness_score": rng.random(n),
            "size_bytes": rng.integers(10_000, 5_000_000, n).astype(np.float64),
        }
    )


def _use_old_search() -> None:
    from exokiratory.passes.flags import neardup

    def old(codes: np.ndarray, t: int, engine: str = "auto") -> Any:
        return neardup.mih_pairs(codes, t)

    neardup.hamming_pairs = old  # type: ignore[assignment]


def run_search(n: int, old: bool) -> dict[str, Any]:
    from exokiratory.passes.flags.hamming_search import (
        describe_plan,
        hamming_pairs,
        plan_substrings,
    )
    from exokiratory.passes.flags.neardup import mih_pairs

    codes = np.unique(synthetic(n).column("phash").to_numpy())
    start = time.perf_counter()
    i, j = mih_pairs(codes, 12) if old else hamming_pairs(codes, 12)
    return {
        "seconds": time.perf_counter() - start,
        "pairs": int(i.size),
        "digest": int((i * 1_000_003 + j).sum() % (2**61 - 1)),
        "plan": None if old else describe_plan(plan_substrings(codes.size, 12)),
    }


def run_rule(n: int, old: bool, out: str | None) -> dict[str, Any]:
    from exokiratory.engine.flag_rules import FlagFrame
    from exokiratory.passes.flags.flag_rules import near_duplicate_columns
    from exokiratory.passes.flags.table import FlagsParams

    if old:
        _use_old_search()
    table = synthetic(n)
    frame = FlagFrame(table, np.ones(n, dtype=bool))
    start = time.perf_counter()
    cols = near_duplicate_columns(frame, FlagsParams())  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    result = pa.table({k: pa.array(v) for k, v in cols.items()})
    if out:
        import pyarrow.parquet as pq

        pq.write_table(result, out)
    return {
        "seconds": seconds,
        "grouped": int(pa.compute.sum(pa.compute.is_valid(result["dup_group_id"])).as_py()),
        "near_duplicates": int(np.asarray(cols["is_near_duplicate"]).sum()),
    }


def child(args: argparse.Namespace) -> None:
    if args.child == "search":
        res = run_search(args.n, args.old)
    else:
        res = run_rule(args.n, args.old, args.out)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def measure(what: str, n: int, old: bool, out: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", what, "--n", str(n)]
    cmd += ["--old"] if old else []
    cmd += ["--out", out] if out else []
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, action="append", help="sizes (repeatable)")
    ap.add_argument("--old-upto", type=int, default=100_000, help="also run the old MIH up to n")
    ap.add_argument("--child", choices=("search", "rule"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import tempfile

    for n in args.images or [100_000]:
        with tempfile.TemporaryDirectory() as tmp:
            new_s = measure("search", n, False)
            print(f"n={n:>9,} search t=12 new: {json.dumps(new_s)}", flush=True)
            new_r = measure("rule", n, False, f"{tmp}/new.parquet")
            print(f"n={n:>9,} rule (defaults) new: {json.dumps(new_r)}", flush=True)
            if n > args.old_upto:
                continue
            old_s = measure("search", n, True)
            same = old_s["digest"] == new_s["digest"] and old_s["pairs"] == new_s["pairs"]
            print(f"n={n:>9,} search t=12 old: {json.dumps(old_s)} same pairs: {same}")
            old_r = measure("rule", n, True, f"{tmp}/old.parquet")
            import pyarrow.parquet as pq

            equal = pq.read_table(f"{tmp}/old.parquet").equals(pq.read_table(f"{tmp}/new.parquet"))
            print(f"n={n:>9,} rule (defaults) old: {json.dumps(old_r)} same columns: {equal}")


if __name__ == "__main__":
    main()
