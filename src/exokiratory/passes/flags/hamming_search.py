"""Exact all-pairs search within a Hamming radius over 64-bit codes, in bounded memory.

:func:`hamming_pairs` returns every index pair ``(i, j)``, ``i < j``, whose codes differ in at
most ``t`` bits: the same set as brute force and as :func:`.neardup.mih_pairs`, sorted the same
way, at any threshold (no capping), in memory that grows with n and the pairs found only.

Pigeonhole blocks
-----------------
The 64 bits are split into ``m`` contiguous substrings with radii ``r_j`` such that
``sum(r_j + 1) >= t + 1`` (generalised pigeonhole: two codes within ``t`` bits are within
``r_j`` bits on at least one substring ``j``; a radius of -1 leaves a substring out). The
``t + 1`` "units" are spread as evenly as possible, e.g. t=12, m=4: radii (3, 2, 2, 2), which
checks 2.5 times fewer candidates than the classic (3, 3, 3, 3). For each substring the codes
are sorted by their key (the substring's value); the bucket of each key is compared densely,
with a Hamming kernel, against the buckets of every key within ``r_j`` bits that is not
smaller (so each pair is compared once per substring). A pair is emitted only by the first
substring that can find it (earlier substrings are checked on the pair's XOR), so no global
de-duplication is needed.

``m`` is chosen by a cost model (kernel calls plus code comparisons for uniformly random
codes, :data:`CALL_COST_S` and :data:`COMPARE_COST_S`, measured on this project's 2-core
machine). Small inputs are compared densely in query blocks (brute force).

Kernels
-------
FAISS (``IndexBinaryFlat.range_search``, single-threaded per call, about 1 ns per code pair)
when ``faiss`` is installed (the ``ml`` extra), else numpy (``bitwise_count``, about 2 ns).
Both give the same pairs. Work is spread over ``workers`` threads (FAISS and numpy release the
GIL). :func:`plan_shards` cuts the search into independent shards (key ranges of a substring,
or row ranges of the brute-force pass) whose outputs, concatenated and sorted, are the same
result (:func:`run_shard`): the unit a cluster runs. Under the ``ray`` shard engine
(:func:`exokiratory.engine.shards.shard_engine`, set by ``exokiratory run flags --engine ray``)
:func:`hamming_pairs` runs the shards through :func:`~exokiratory.engine.shards.map_shards`:
one Ray task per shard (:data:`SHARDS_PER_CPU` per cluster CPU and substring), the codes put
once in the object store. Same pairs, same order. A ``transform`` (the near-duplicate rule's
expansion to images and check of its other hashes, :func:`.neardup.find_pairs`) runs inside
each shard, so only verified pairs come back.

Memory: the codes, one sort order and one bucket table per substring (a few times 8 bytes per
code), and each kernel call compares at most :data:`BLOCK_COMPARES` code pairs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import combinations
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from exokiratory.engine.shards import current_engine, map_shards, parallelism, shard_engine
from exokiratory.passes.sense.hashes import popcount

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]
Kernel = Callable[[U64Array, U64Array, int], tuple[IntArray, IntArray]]
PairTransform = Callable[[IntArray, IntArray], tuple[IntArray, IntArray]]
"""Applied to a shard's pairs where the shard runs (see :func:`hamming_pairs`)."""
Engine = Literal["auto", "faiss", "numpy"]

CALL_COST_S = 7e-5
"""Cost model: seconds per kernel call (gather, index, result copy)."""

COMPARE_COST_S = 1e-9
"""Cost model: seconds per code pair compared by the kernel."""

MAX_KEY_BITS = 22
"""Widest substring key (its bucket table has 2**bits entries)."""

BRUTE_FORCE_N = 2048
"""Up to this many codes the search is one dense brute-force pass."""

BLOCK_COMPARES = 4_000_000
"""Max code pairs compared by one kernel call (query rows are split to fit)."""

KEYS_PER_TASK = 256
"""Occupied keys handled by one thread task (results are merged in key order)."""

SHARD_KEYS = 4096
"""Default most substring keys in one shard of :func:`plan_shards`."""

SHARDS_PER_CPU = 4
"""Shards per cluster CPU and substring on Ray (few, large shards: each one sorts the codes by
its substring's key; enough of them to balance the load)."""


@dataclass(frozen=True)
class Substring:
    """One substring of the 64-bit code: bits ``[shift, shift + width)``, searched at ``radius``."""

    shift: int
    width: int
    radius: int

    @property
    def mask(self) -> np.uint64:
        """The substring's bits, in place in the 64-bit code."""
        return np.uint64(((1 << self.width) - 1) << self.shift)


@dataclass(frozen=True)
class Shard:
    """An independent piece of the search: keys ``[lo, hi)`` of substring ``index`` of ``plan``
    (``index = -1``: rows ``[lo, hi)`` of the brute-force pass)."""

    index: int
    lo: int
    hi: int


# ----------------------------------------------------------------------------- the plan


def _chunk_widths(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m contiguous substrings covering 64 bits, wider ones first."""
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 64
    for width in widths:
        shift -= width
        out.append((shift, width))
    return out


def substring_radii(t: int, m: int) -> list[int]:
    """Radii r_j with sum(r_j + 1) = t + 1, as even as possible (larger on earlier substrings)."""
    units, extra = divmod(t + 1, m)
    return [units + (1 if j < extra else 0) - 1 for j in range(m)]


def _ball(bits: int, radius: int) -> int:
    return sum(math.comb(bits, k) for k in range(radius + 1))


def plan_cost(n: int, plan: Sequence[Substring]) -> float:
    """Expected seconds for n uniformly random codes (:data:`CALL_COST_S`, :data:`COMPARE_COST_S`)."""
    if not plan:
        return 0.5 * n * n * COMPARE_COST_S + math.ceil(n / 1024) * CALL_COST_S
    cost = 0.0
    for sub in plan:
        keys = min(float(n), 2.0**sub.width)
        share = min(1.0, _ball(sub.width, sub.radius) / 2.0**sub.width)
        cost += keys * CALL_COST_S + 0.5 * n * n * share * COMPARE_COST_S
    return cost


def plan_substrings(n: int, t: int) -> list[Substring]:
    """The cheapest substring split for n codes at threshold t; ``[]`` means brute force."""
    best: list[Substring] = []
    best_cost = plan_cost(n, best)
    if n <= BRUTE_FORCE_N or t >= 64:
        return best
    for m in range(1, 65):
        bounds = _chunk_widths(m)
        if bounds[0][1] > MAX_KEY_BITS:
            continue
        radii = substring_radii(t, m)
        plan = [Substring(s, w, r) for (s, w), r in zip(bounds, radii, strict=True) if r >= 0]
        cost = plan_cost(n, plan)
        if cost < best_cost:
            best, best_cost = plan, cost
    return best


@lru_cache(maxsize=64)
def _flips(width: int, radius: int) -> IntArray:
    """0 and every XOR mask over ``width`` bits with popcount in 1..radius."""
    masks = [0] + [
        sum(1 << b for b in combo)
        for k in range(1, radius + 1)
        for combo in combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.int64)


# ------------------------------------------------------------------------------ kernels


def numpy_kernel(query: U64Array, db: U64Array, t: int) -> tuple[IntArray, IntArray]:
    """(query row, db row) of every pair within t bits, by numpy broadcasting."""
    qi, di = np.nonzero(popcount(query[:, None] ^ db[None, :]) <= t)
    return qi.astype(np.int64), di.astype(np.int64)


def faiss_kernel(query: U64Array, db: U64Array, t: int) -> tuple[IntArray, IntArray]:
    """Same as :func:`numpy_kernel` with FAISS ``IndexBinaryFlat.range_search`` (d < t + 1)."""
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(db).view(np.uint8).reshape(-1, 8))
    lims, _, ids = index.range_search(
        np.ascontiguousarray(query).view(np.uint8).reshape(-1, 8), t + 1
    )
    qi = np.repeat(np.arange(query.size, dtype=np.int64), np.diff(lims).astype(np.int64))
    return qi, ids.astype(np.int64)


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def pick_kernel(engine: Engine) -> Kernel:
    """FAISS for ``faiss`` (or ``auto`` when installed), else numpy."""
    if engine == "faiss" or (engine == "auto" and have_faiss()):
        if not have_faiss():
            raise ValueError("engine 'faiss' needs faiss: pip install 'exokiratory[ml]'")
        return faiss_kernel
    if engine not in ("auto", "numpy"):
        raise ValueError(f"unknown Hamming search engine {engine!r} (auto, faiss or numpy)")
    return numpy_kernel


@contextmanager
def _single_threaded_faiss(kernel: Kernel) -> Iterator[None]:
    """FAISS's OpenMP threads off while our own threads run kernels (oversubscription)."""
    if kernel is not faiss_kernel:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _blocked(
    kernel: Kernel, query: U64Array, db: U64Array, t: int
) -> Iterator[tuple[int, IntArray, IntArray]]:
    """Kernel calls over query row blocks of at most :data:`BLOCK_COMPARES` compares."""
    step = max(1, BLOCK_COMPARES // max(db.size, 1))
    for lo in range(0, query.size, step):
        qi, di = kernel(query[lo : lo + step], db, t)
        yield lo, qi, di


# ------------------------------------------------------------------------------ shards


class _Bucketed:
    """Codes sorted by one substring's key, with each key's start and count."""

    def __init__(self, codes: U64Array, sub: Substring) -> None:
        low = np.uint64((1 << sub.width) - 1)
        keys = ((codes >> np.uint64(sub.shift)) & low).astype(np.int64)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = codes[self.order]
        self.counts = np.bincount(keys, minlength=1 << sub.width)
        self.starts = np.cumsum(self.counts) - self.counts
        self.flips = _flips(sub.width, sub.radius)

    def occupied(self) -> IntArray:
        return np.flatnonzero(self.counts)

    def key_pairs(self, key: int, t: int, kernel: Kernel) -> tuple[IntArray, IntArray]:
        """Sorted positions (a, b), a < b, of pairs within t with key[a] = key, key[b] >= key."""
        near = key ^ self.flips
        near = near[near >= key]
        near = near[self.counts[near] > 0]
        lens = self.counts[near]
        offsets = np.cumsum(lens) - lens
        pos = np.repeat(self.starts[near] - offsets, lens) + np.arange(int(lens.sum()))
        start = int(self.starts[key])
        query = self.sorted[start : start + int(self.counts[key])]
        out_a, out_b = [], []
        for lo, qi, di in _blocked(kernel, query, self.sorted[pos], t):
            a, b = start + lo + qi, pos[di]
            keep = a < b  # the key's own bucket: each pair once, no self pairs
            out_a.append(a[keep])
            out_b.append(b[keep])
        return np.concatenate(out_a), np.concatenate(out_b)


def plan_shards(
    n: int, t: int, keys_per_shard: int | None = SHARD_KEYS, min_shards: int = 1
) -> tuple[list[Substring], list[Shard]]:
    """The plan for n codes at t and its shards: key ranges of each substring (row ranges for
    brute force), ``min_shards`` of them per substring when there are enough keys (rows), and
    at most ``keys_per_shard`` keys (``64 * keys_per_shard`` rows) each unless it is None.
    Each shard sorts the codes by its substring's key, so a cluster wants few large shards."""
    plan = plan_substrings(n, t)
    want = max(1, min_shards)
    if not plan:
        rows = math.ceil(n / want)
        if keys_per_shard is not None:
            rows = min(rows, keys_per_shard * 64)
        rows = max(1, rows)
        return plan, [Shard(-1, lo, min(n, lo + rows)) for lo in range(0, n, rows)]
    shards = []
    for index, sub in enumerate(plan):
        size = 1 << sub.width
        step = math.ceil(size / want)
        if keys_per_shard is not None:
            step = min(step, keys_per_shard)
        step = max(1, step)
        shards += [Shard(index, lo, min(size, lo + step)) for lo in range(0, size, step)]
    return plan, shards


def _earlier_ok(x: U64Array, earlier: Sequence[Substring]) -> npt.NDArray[np.bool_]:
    """Pairs (by XOR) that no earlier substring finds (so this one emits them)."""
    ok = np.ones(x.size, dtype=bool)
    for sub in earlier:
        ok &= popcount(x & sub.mask) > sub.radius
    return ok


def _substring_shard(
    codes: U64Array,
    t: int,
    plan: Sequence[Substring],
    index: int,
    key_lo: int,
    key_hi: int,
    kernel: Kernel,
    workers: int,
    bucketed: _Bucketed | None = None,
) -> tuple[IntArray, IntArray]:
    bucketed = bucketed or _Bucketed(codes, plan[index])
    keys = bucketed.occupied()
    keys = keys[(keys >= key_lo) & (keys < key_hi)]
    tasks = [keys[lo : lo + KEYS_PER_TASK] for lo in range(0, keys.size, KEYS_PER_TASK)]

    def run(task: IntArray) -> tuple[IntArray, IntArray]:
        found = [bucketed.key_pairs(int(k), t, kernel) for k in task]
        a = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
        b = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
        i, j = bucketed.order[a], bucketed.order[b]
        ok = _earlier_ok(codes[i] ^ codes[j], plan[:index])
        return np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])

    if workers > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(run, tasks))
    else:
        parts = [run(task) for task in tasks]
    return _concat(parts)


def _brute_shard(
    codes: U64Array, t: int, row_lo: int, row_hi: int, kernel: Kernel
) -> tuple[IntArray, IntArray]:
    """Pairs (i, j), i in [row_lo, row_hi), j > i."""
    parts = []
    for lo, qi, di in _blocked(kernel, codes[row_lo:row_hi], codes[row_lo:], t):
        i, j = row_lo + lo + qi, row_lo + di
        keep = i < j
        parts.append((i[keep], j[keep]))
    return _concat(parts)


def _concat(parts: Sequence[tuple[IntArray, IntArray]]) -> tuple[IntArray, IntArray]:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run_shard(
    codes: np.ndarray,
    t: int,
    plan: Sequence[Substring],
    shard: Shard,
    engine: Engine = "auto",
    workers: int = 1,
) -> tuple[IntArray, IntArray]:
    """The pairs of one shard (unsorted; the shards of :func:`plan_shards` partition the result)."""
    arr = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    kernel = pick_kernel(engine)
    with _single_threaded_faiss(kernel):
        if shard.index < 0:
            return _brute_shard(arr, t, shard.lo, shard.hi, kernel)
        return _substring_shard(arr, t, plan, shard.index, shard.lo, shard.hi, kernel, workers)


def sort_pairs(i: IntArray, j: IntArray) -> tuple[IntArray, IntArray]:
    """Pairs sorted by (i, j), as :func:`.neardup.mih_pairs` returns them."""
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def hamming_pairs(
    codes: np.ndarray,
    t: int,
    engine: Engine = "auto",
    workers: int | None = None,
    transform: PairTransform | None = None,
) -> tuple[IntArray, IntArray]:
    """All index pairs ``(i, j)``, ``i < j``, with ``hamming(codes[i], codes[j]) <= t``.

    Exact at any ``t`` (see the module docstring), sorted by (i, j). ``engine``: the Hamming
    kernel (``auto``: FAISS when installed, else numpy); ``workers``: threads (default: the
    CPU count, at most 4). Under the ``ray`` shard engine: Ray tasks over :func:`plan_shards`.
    ``transform``: applied to each shard's pairs where the shard runs (in the Ray task: e.g.
    the expansion to images and the other hashes' check of :func:`.neardup.find_pairs`, so
    only verified pairs come back to the driver); the result is then the transformed pairs of
    every shard, sorted by (i, j).
    """
    arr = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    if t < 0:
        raise ValueError("threshold must be >= 0")
    t = min(t, 64)
    if arr.size < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if current_engine().name != "local":
        return _pairs_on_shards(arr, t, engine, transform=transform)
    kernel = pick_kernel(engine)
    threads = default_workers() if workers is None else max(1, workers)
    plan = plan_substrings(arr.size, t)
    log.debug("hamming search: %d codes, t=%d, plan %s", arr.size, t, plan)
    parts: list[tuple[IntArray, IntArray]] = []
    with _single_threaded_faiss(kernel):
        if not plan:
            parts.append(_apply(transform, _brute_shard(arr, t, 0, arr.size, kernel)))
        for index, sub in enumerate(plan):
            bucketed = _Bucketed(arr, sub)
            found = _substring_shard(
                arr, t, plan, index, 0, 1 << sub.width, kernel, threads, bucketed
            )
            parts.append(_apply(transform, found))
    return sort_pairs(*_concat(parts))


def _apply(
    transform: PairTransform | None, pairs: tuple[IntArray, IntArray]
) -> tuple[IntArray, IntArray]:
    return pairs if transform is None else transform(*pairs)


def describe_plan(plan: Sequence[Substring]) -> dict[str, Any]:
    """The plan as plain data (logs, benchmarks)."""
    if not plan:
        return {"method": "brute force"}
    return {"widths": [s.width for s in plan], "radii": [s.radius for s in plan]}


def hamming_pairs_ray(
    codes: np.ndarray, t: int, engine: Engine = "auto", keys_per_shard: int | None = None
) -> tuple[IntArray, IntArray]:
    """:func:`hamming_pairs` on Ray (``shard_engine("ray")``: connects to ``RAY_ADDRESS`` or
    starts Ray unless this process is connected), with shards of at most ``keys_per_shard``
    keys (default: :data:`SHARDS_PER_CPU` shards per cluster CPU per substring). Same pairs,
    same order."""
    arr = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    if t < 0:
        raise ValueError("threshold must be >= 0")
    if arr.size < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    with shard_engine("ray", current_engine().address):
        return _pairs_on_shards(arr, min(t, 64), engine, keys_per_shard)


def _shard_task(
    shard: Shard,
    codes: U64Array,
    transform: PairTransform | None,
    t: int,
    plan: Sequence[Substring],
    engine: Engine,
) -> tuple[IntArray, IntArray]:
    return _apply(transform, run_shard(codes, t, plan, shard, engine, 1))


def _pairs_on_shards(
    arr: U64Array,
    t: int,
    engine: Engine,
    keys_per_shard: int | None = None,
    transform: PairTransform | None = None,
) -> tuple[IntArray, IntArray]:
    """The search as :func:`map_shards` over :func:`plan_shards` (:data:`SHARDS_PER_CPU`
    shards per worker of the current shard engine and substring), the codes and the
    ``transform`` shared once."""
    want = SHARDS_PER_CPU * parallelism()
    plan, shards = plan_shards(arr.size, t, keys_per_shard, min_shards=want)
    log.info("hamming search: %d codes, t=%d, %d shards", arr.size, t, len(shards))
    parts = map_shards(
        partial(_shard_task, t=t, plan=plan, engine=engine),
        shards,
        (arr, transform),
        desc=f"hamming search ({arr.size} codes, t={t})",
    )
    return sort_pairs(*_concat(parts))
