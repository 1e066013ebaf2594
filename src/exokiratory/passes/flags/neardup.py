"""Near-duplicate detection over 64-bit perceptual hashes.

Pair search: multi-index hashing (MIH)
--------------------------------------
All pairs with Hamming distance <= t are found without comparing all pairs. The 64 bits are
split into ``m`` contiguous substrings. By the pigeonhole principle, two codes within
distance t have at least one substring within distance ``r = t // m``. With the classic
choice ``m = t + 1`` this is ``r = 0``: candidates share one substring exactly, and buckets
are formed with a numpy sort. For large collections and large t, 64 / (t + 1) bits per
substring give huge buckets, so by default ``m`` is picked by a cost model (expected probes
plus candidate pairs for uniformly random codes) among ``1..t+1``; for ``r > 0`` each bucket
key is probed with every XOR mask of popcount <= r (Norouzi et al., "Fast search in Hamming
space with multi-index hashing", 2012). Either way the result is exact: every candidate is
verified on the full 64-bit distance, and a pair is only emitted by the first substring
that matches it (no global de-duplication needed).

:func:`mih_pairs` is kept as the reference implementation; the groups search pairs with
:func:`.hamming_search.hamming_pairs` (same pairs, same order): pigeonhole substrings with
uneven radii whose buckets are compared densely by a FAISS (or numpy) Hamming kernel, in
bounded memory and at any threshold (10^6 random codes at t=12: about 30 s, 110 MB on 2
cores; see ``bench/neardup_scale.py``).

Identical codes are collapsed before the search (``np.unique``); pairs between unique codes
are then expanded to member pairs. A set of more than ``max_identical`` images sharing one
code (typically blank / uniform images, whose pHash is 0) is not expanded: its members are
linked directly to its first member (a star), and only that representative takes part in
pairs with other codes. This bounds the output at O(n) for degenerate collections.

Combining hash types
--------------------
``rule`` is a disjunction of clauses; a clause is a tuple of hash names and is satisfied
when every named hash is within its threshold. :data:`DEFAULT_RULE` and
:data:`DEFAULT_THRESHOLDS` were tuned on ``bench/neardup_quality.py``::

    (phash <= 12 AND dhash <= 16)  OR  (phash_center <= 8 AND dhash <= 22)

Each clause is searched on its most selective hash (smallest threshold) and the
candidates are checked on the other hashes of the clause. Star links of identical-code sets
(see above) are accepted without checking the other hashes. A clause may also carry
``checks``: hashes that must be within their threshold too but are never searched (nor used as
the clause's key), and that star links must satisfy as well. The flags use one for the alpha
hash (:func:`with_checks`, ``alpha_phash``, 0 for opaque images): different transparent
overlays composite to the same blank image over a white background, and only their alpha
silhouettes tell them apart.

Groups and canonicals
---------------------
Pairs are merged by union-find (connected components). The canonical image of a group is the
first one by: ``megapixels`` descending, ``sharpness_score`` descending, ``size_bytes``
descending, then ``image_id`` ascending (missing / NaN values sort last). Output is sorted
by ``image_id`` and does not depend on the input order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, pairwise

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from exokiratory.passes.flags.hamming_search import Engine, hamming_pairs
from exokiratory.passes.sense.hashes import hamming, popcount

IntArray = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]

DEFAULT_THRESHOLDS: dict[str, int] = {"phash": 12, "dhash": 16, "phash_center": 8}
"""Per-hash thresholds of the first use of each hash in :data:`DEFAULT_RULE`."""

CENTER_DHASH_THRESHOLD = 22
"""dHash threshold of the ``phash_center`` clause of :data:`DEFAULT_RULE`."""

QUALITY_COLUMNS: tuple[str, ...] = ("megapixels", "sharpness_score", "size_bytes")
"""Quality columns used (in this order, larger first) to choose a group's canonical."""

MAX_IDENTICAL = 1000
"""Sets of identical codes larger than this are linked as a star (see module docstring)."""

DENSE_LOOKUP_BITS = 24
"""Substrings up to this width probe a dense key -> bucket table instead of a binary search."""

PAIR_BATCH = 4_000_000
"""Max candidate pairs materialised at once during verification (memory bound)."""

OUTPUT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("dup_group_id", pa.string()),
        ("is_canonical", pa.bool_()),
        ("dup_group_size", pa.int32()),
        ("hash_distance_to_canonical", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Clause:
    """One conjunctive clause: every hash named in ``thresholds`` within its threshold."""

    thresholds: tuple[tuple[str, int], ...]
    #: conditions verified on every pair (star links too) but never searched
    checks: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        """Most selective hash (smallest threshold, then first listed): searched by MIH."""
        return min(self.thresholds, key=lambda item: item[1])


DEFAULT_RULE: tuple[Clause, ...] = (
    Clause((("phash", 12), ("dhash", 16))),
    Clause((("phash_center", 8), ("dhash", CENTER_DHASH_THRESHOLD))),
)
"""Tuned default: (phash <= 12 AND dhash <= 16) OR (phash_center <= 8 AND dhash <= 22)."""


# --------------------------------------------------------------------------- MIH search


def _chunk_bounds(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m contiguous substrings covering 64 bits, widths differ by <= 1."""
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    bounds = []
    shift = 64
    for width in widths:
        shift -= width
        bounds.append((shift, width))
    return bounds


def _ball_size(bits: int, radius: int) -> int:
    return sum(math.comb(bits, k) for k in range(radius + 1))


def choose_num_chunks(n: int, t: int) -> int:
    """Number of substrings minimising the expected cost for n uniformly random codes."""
    best_m, best_cost = t + 1, math.inf
    for m in range(1, min(t + 1, 64) + 1):
        bits = 64 // m
        ball = _ball_size(bits, t // m)
        keys = min(float(n), 2.0**bits)
        cost = m * (keys * min(ball, keys) + 0.5 * n * n * ball / 2.0**bits)
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


@lru_cache(maxsize=128)
def _flip_masks(width: int, radius: int) -> U64Array:
    """All XOR masks over ``width`` bits with popcount in 1..radius."""
    masks = [
        sum(1 << b for b in combo)
        for k in range(1, radius + 1)
        for combo in combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


def _cross_pairs(
    start_a: IntArray, len_a: IntArray, start_b: IntArray, len_b: IntArray
) -> tuple[IntArray, IntArray]:
    """All (a, b) positions in the cross products of runs [start_a, +len_a) x [start_b, +len_b)."""
    sizes = len_a * len_b
    total = int(sizes.sum())
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    run = np.repeat(np.arange(sizes.size), sizes)
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return start_a[run] + offset // len_b[run], start_b[run] + offset % len_b[run]


def _batched_runs(sizes: IntArray, budget: int) -> list[slice]:
    """Slices of consecutive runs whose total size stays near ``budget`` per slice."""
    if sizes.size == 0:
        return []
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, np.arange(budget, int(cum[-1]), budget), side="left")
    edges = np.unique(np.concatenate([[0], cuts + 1, [sizes.size]]))
    return [slice(int(lo), int(hi)) for lo, hi in pairwise(edges)]


class _ChunkSearch:
    """Candidate generation for one substring, verification against the full code."""

    def __init__(self, codes: U64Array, t: int, bounds: list[tuple[int, int]], j: int) -> None:
        self.codes = codes
        self.t = t
        self.radius = t // len(bounds)
        self.earlier = [self._chunk_mask(w) << np.uint64(s) for s, w in bounds[:j]]
        shift, width = bounds[j]
        keys = (codes >> np.uint64(shift)) & self._chunk_mask(width)
        self.order = np.argsort(keys, kind="stable")
        self.ukeys, self.starts, self.lens = np.unique(
            keys[self.order], return_index=True, return_counts=True
        )
        self.width = width

    @staticmethod
    def _chunk_mask(width: int) -> np.uint64:
        return np.uint64((1 << width) - 1)

    def pairs(self) -> list[tuple[IntArray, IntArray]]:
        out = [self._verify_runs(self.starts, self.lens, self.starts, self.lens, same=True)]
        if self.radius == 0:
            return out
        if _ball_size(self.width, self.radius) <= self.ukeys.size:
            neighbours = self._neighbours_by_masks()
        else:
            neighbours = self._neighbours_by_scan()
        for a, b in neighbours:
            out.append(
                self._verify_runs(self.starts[a], self.lens[a], self.starts[b], self.lens[b])
            )
        return out

    def _neighbours_by_masks(self) -> list[tuple[IntArray, IntArray]]:
        """Bucket pairs (a, b), key[a] < key[b], at key distance 1..r, by XOR-mask probes."""
        found = []
        if self.width <= DENSE_LOOKUP_BITS:  # direct table: key -> bucket index (or -1)
            lut = np.full(1 << self.width, -1, dtype=np.int64)
            lut[self.ukeys.astype(np.int64)] = np.arange(self.ukeys.size)
            for mask in _flip_masks(self.width, self.radius):
                pos = lut[(self.ukeys ^ mask).astype(np.int64)]
                hit = pos > np.arange(self.ukeys.size)
                found.append((np.flatnonzero(hit), pos[hit]))
            return found
        last = self.ukeys.size - 1
        for mask in _flip_masks(self.width, self.radius):
            probe = self.ukeys ^ mask
            pos = np.minimum(np.searchsorted(self.ukeys, probe), last)
            hit = (self.ukeys[pos] == probe) & (probe > self.ukeys)
            found.append((np.flatnonzero(hit), pos[hit]))
        return found

    def _neighbours_by_scan(self) -> list[tuple[IntArray, IntArray]]:
        """Same as :meth:`_neighbours_by_masks` by scanning key pairs (few distinct keys)."""
        found = []
        size = self.ukeys.size
        step = max(1, PAIR_BATCH // max(size, 1))
        for lo in range(0, size, step):
            block = self.ukeys[lo : lo + step]
            dist = popcount(block[:, None] ^ self.ukeys[None, :])
            a, b = np.nonzero((dist <= self.radius) & (dist > 0))
            a = a + lo
            upper = a < b
            found.append((a[upper].astype(np.int64), b[upper].astype(np.int64)))
        return found

    def _verify_runs(
        self, sa: IntArray, la: IntArray, sb: IntArray, lb: IntArray, same: bool = False
    ) -> tuple[IntArray, IntArray]:
        keep = (la * lb > 1) if same else (la * lb > 0)
        sa, la, sb, lb = sa[keep], la[keep], sb[keep], lb[keep]
        found_i, found_j = [], []
        for part in _batched_runs(la * lb, PAIR_BATCH):
            pa_, pb_ = _cross_pairs(sa[part], la[part], sb[part], lb[part])
            if same:
                upper = pa_ < pb_
                pa_, pb_ = pa_[upper], pb_[upper]
            i, j = self.order[pa_], self.order[pb_]
            i, j = self._verify(i, j)
            found_i.append(np.minimum(i, j))
            found_j.append(np.maximum(i, j))
        if not found_i:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(found_i), np.concatenate(found_j)

    def _verify(self, i: IntArray, j: IntArray) -> tuple[IntArray, IntArray]:
        x = self.codes[i] ^ self.codes[j]
        ok = popcount(x) <= self.t
        for mask in self.earlier:  # found by an earlier substring already
            ok &= popcount(x & mask) > self.radius
        return i[ok], j[ok]


def mih_pairs(codes: np.ndarray, t: int, m: int | None = None) -> tuple[IntArray, IntArray]:
    """All index pairs ``(i, j)``, ``i < j``, with ``hamming(codes[i], codes[j]) <= t``.

    Exact (same set as brute force). ``m`` = number of substrings; ``None`` picks it with
    :func:`choose_num_chunks`; ``m = t + 1`` is pure pigeonhole (exact substring matches).
    Output is sorted by (i, j). Identical codes are handled like any other (buckets of
    identical codes yield all their pairs); see :func:`find_pairs` for the capped variant.
    """
    arr = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
    if t < 0:
        raise ValueError("threshold must be >= 0")
    t = min(t, 64)
    if arr.size < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    m = choose_num_chunks(arr.size, t) if m is None else m
    if not 1 <= m <= 64:
        raise ValueError("m must be in 1..64")
    bounds = _chunk_bounds(m)
    parts = [p for j in range(m) for p in _ChunkSearch(arr, t, bounds, j).pairs()]
    i = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    j = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64)


# ------------------------------------------------------------- duplicates-aware pair search


@dataclass(frozen=True)
class PairSet:
    """Candidate pairs over images: ``checked`` need verification, ``star`` are accepted."""

    i: IntArray
    j: IntArray
    star_i: IntArray
    star_j: IntArray


def _groups_of_equal(inverse: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Members sorted by unique code, plus start and length of each code's run."""
    members = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.cumsum(counts) - counts
    return members, starts, counts


def find_pairs(
    codes: np.ndarray,
    t: int,
    max_identical: int = MAX_IDENTICAL,
    engine: Engine = "auto",
    hashes: Mapping[str, np.ndarray] | None = None,
    conditions: Sequence[tuple[str, int]] = (),
) -> PairSet:
    """Image pairs within distance t, with identical-code sets > max_identical as stars.

    ``engine``: the Hamming kernel of :func:`.hamming_search.hamming_pairs` (same pairs).
    ``conditions`` (hash name, limit) on ``hashes``: the pairs (not the stars) are only those
    that also meet them, checked where each search shard runs (a Ray task on a cluster), so
    unverified candidates never gather in one place (1.1e9 of them at 10^8 images)."""
    arr = np.asarray(codes, dtype=np.uint64).reshape(-1)
    uniq, inverse = np.unique(arr, return_inverse=True)
    members, starts, counts = _groups_of_equal(inverse.reshape(-1).astype(np.int64))
    big = counts > max_identical
    eff = np.where(big, 1, counts)
    expand = _Expand(members, starts, eff, dict(hashes or {}), tuple(conditions))
    i, j = hamming_pairs(uniq, t, engine=engine, transform=expand)
    within = np.where((counts >= 2) & ~big, counts, 0)
    wi, wj = _cross_pairs(starts, within, starts, within)
    upper = wi < wj
    si_, sj_ = expand.checked(members[wi[upper]], members[wj[upper]])
    star_codes = np.flatnonzero(big)
    star_len = counts[star_codes]
    si, sj = _cross_pairs(starts[star_codes], np.ones_like(star_len), starts[star_codes], star_len)
    return PairSet(np.concatenate([i, si_]), np.concatenate([j, sj_]), members[si], members[sj])


@dataclass(frozen=True)
class _Expand:
    """The pairs of unique codes as image pairs (every member of one code with every member
    of the other, one member for a star set), kept when they meet ``conditions``: the
    transform :func:`find_pairs` has each search shard apply (shared once with the tasks)."""

    members: IntArray
    starts: IntArray
    eff: IntArray
    hashes: dict[str, np.ndarray]
    conditions: tuple[tuple[str, int], ...]

    def __call__(self, ui: IntArray, uj: IntArray) -> tuple[IntArray, IntArray]:
        ci, cj = _cross_pairs(self.starts[ui], self.eff[ui], self.starts[uj], self.eff[uj])
        return self.checked(self.members[ci], self.members[cj])

    def checked(self, i: IntArray, j: IntArray) -> tuple[IntArray, IntArray]:
        """(min, max) of the image pairs that meet the conditions."""
        ok = _within(self.hashes, self.conditions, i, j)
        i, j = i[ok], j[ok]
        return np.minimum(i, j), np.maximum(i, j)


# ------------------------------------------------------------------------- rule and groups


def _default_clauses(thresholds: Mapping[str, int]) -> list[Clause]:
    """:data:`DEFAULT_RULE`; ``thresholds`` overrides phash / dhash (1st clause) and
    phash_center (2nd clause); the 2nd clause's dHash limit stays ``CENTER_DHASH_THRESHOLD``.
    """
    limits = {**DEFAULT_THRESHOLDS, **thresholds}
    return [
        Clause((("phash", int(limits["phash"])), ("dhash", int(limits["dhash"])))),
        Clause((("phash_center", int(limits["phash_center"])), DEFAULT_RULE[1].thresholds[1])),
    ]


def make_clauses(
    thresholds: Mapping[str, int], rule: Sequence[Sequence[str]] | Sequence[Clause] | None
) -> list[Clause]:
    if rule is None:
        return _default_clauses(thresholds)
    clauses = []
    for clause in rule:
        if isinstance(clause, Clause):
            clauses.append(clause)
            continue
        missing = [name for name in clause if name not in thresholds]
        if missing or not clause:
            raise ValueError(f"rule clause {clause!r} lacks thresholds for {missing}")
        clauses.append(Clause(tuple((name, int(thresholds[name])) for name in clause)))
    return clauses


def with_checks(clauses: Sequence[Clause], checks: Sequence[tuple[str, int]]) -> list[Clause]:
    """``clauses`` with ``checks`` (hash name, threshold) added to each one's checks."""
    return [Clause(c.thresholds, (*c.checks, *checks)) for c in clauses]


def _within(
    hashes: Mapping[str, np.ndarray],
    conditions: Sequence[tuple[str, int]],
    i: IntArray,
    j: IntArray,
) -> npt.NDArray[np.bool_]:
    ok = np.ones(i.size, dtype=bool)
    for name, limit in conditions:
        h = hashes[name]
        ok &= hamming(h[i], h[j]) <= limit
    return ok


def rule_pairs(
    hashes: Mapping[str, np.ndarray], clauses: Sequence[Clause], max_identical: int = MAX_IDENTICAL
) -> tuple[IntArray, IntArray]:
    """Edges (i, j) satisfying at least one clause (plus star links of identical sets)."""
    edges_i, edges_j = [], []
    for clause in clauses:
        key, key_t = clause.key
        others = [(name, limit) for name, limit in clause.thresholds if name != key]
        conditions = [*others, *clause.checks]
        needed = {name: hashes[name] for name, _ in conditions}
        found = find_pairs(hashes[key], key_t, max_identical, hashes=needed, conditions=conditions)
        star = _within(hashes, clause.checks, found.star_i, found.star_j)
        edges_i += [found.i, found.star_i[star]]
        edges_j += [found.j, found.star_j[star]]
    if not edges_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(edges_i), np.concatenate(edges_j)


def connected_components(n: int, i: np.ndarray, j: np.ndarray) -> IntArray:
    """Union-find by min-label hooking + pointer jumping; label = smallest member index."""
    labels = np.arange(n, dtype=np.int64)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    while True:
        li, lj = labels[i], labels[j]
        low = np.minimum(li, lj)
        new = labels.copy()
        np.minimum.at(new, li, low)
        np.minimum.at(new, lj, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def _quality_keys(
    n: int, quality: Mapping[str, Sequence[float] | np.ndarray] | None
) -> list[npt.NDArray[np.float64]]:
    """Sort keys (ascending = better first) for the quality columns present."""
    keys = []
    for name in QUALITY_COLUMNS:
        if quality is None or name not in quality:
            continue
        values = np.asarray(quality[name], dtype=np.float64).reshape(-1)
        if values.size != n:
            raise ValueError(f"quality column {name!r} has {values.size} values, expected {n}")
        keys.append(np.where(np.isnan(values), np.inf, -values))
    return keys


def choose_canonicals(
    ids: npt.NDArray[np.str_] | pa.Array,
    labels: IntArray,
    quality: Mapping[str, Sequence[float] | np.ndarray] | None = None,
) -> IntArray:
    """Index of the canonical member for each image's component (see module docstring). A
    singleton is its own canonical: only the members of larger components are sorted."""
    n = len(ids)
    keys = _quality_keys(n, quality)
    labels = np.asarray(labels, dtype=np.int64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    canon = np.arange(n, dtype=np.int64)
    grouped = np.flatnonzero(counts[inverse.reshape(-1)] >= 2)
    if grouped.size == 0:
        return canon
    sub_ids = (
        ids.take(pa.array(grouped, pa.int64())).to_numpy(zero_copy_only=False)
        if isinstance(ids, pa.Array)
        else np.asarray(ids)[grouped]
    )
    id_rank = np.argsort(np.argsort(sub_ids, kind="stable"), kind="stable")
    sub_labels = labels[grouped]
    order = np.lexsort((id_rank, *(k[grouped] for k in reversed(keys)), sub_labels))
    first = np.ones(order.size, dtype=bool)
    first[1:] = sub_labels[order][1:] != sub_labels[order][:-1]
    heads = order[first]
    winner = dict(zip(sub_labels[heads].tolist(), grouped[heads].tolist(), strict=True))
    canon[grouped] = [winner[label] for label in sub_labels.tolist()]
    return canon


def _validate(
    ids: Sequence[str] | pa.Array | pa.ChunkedArray, hashes: Mapping[str, np.ndarray]
) -> pa.Array:
    """The ids as an Arrow string array (an Arrow array is used as it is: no Python string per
    image); errors for repeated ids and hash columns of another length."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    arr = ids if isinstance(ids, pa.Array) else pa.array([str(x) for x in ids], pa.string())
    arr = arr if arr.type == pa.string() else arr.cast(pa.string())
    if pc.count_distinct(arr).as_py() != len(arr) or arr.null_count:
        raise ValueError("image ids must be unique")
    for name, values in hashes.items():
        if np.asarray(values).reshape(-1).size != len(arr):
            raise ValueError(f"hash column {name!r} length differs from ids")
    return arr


def find_near_duplicates(
    ids: Sequence[str],
    hashes: Mapping[str, np.ndarray],
    thresholds: Mapping[str, int] | None = None,
    rule: Sequence[Sequence[str]] | Sequence[Clause] | None = None,
    quality: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    primary: str = "phash",
    max_identical: int = MAX_IDENTICAL,
) -> pa.Table:
    """Group near-duplicate images and choose a canonical per group.

    ``hashes`` maps hash names to uint64 arrays aligned with ``ids``. ``rule`` is a list of
    clauses (tuples of hash names, each within ``thresholds[name]``); a pair is a duplicate
    when any clause holds. ``rule=None`` uses :data:`DEFAULT_RULE` with
    :data:`DEFAULT_THRESHOLDS` (overridable through ``thresholds``). ``quality`` may hold
    ``megapixels``, ``sharpness_score`` and ``size_bytes`` aligned with ``ids``.

    Returns a table (schema :data:`OUTPUT_SCHEMA`) with one row per image that belongs to a
    group of size >= 2, sorted by ``image_id``; ``hash_distance_to_canonical`` is measured
    on ``primary`` (or the first hash given if ``primary`` is absent).
    """
    clauses = make_clauses(thresholds or {}, rule)
    return group_near_duplicates(ids, hashes, [(clauses, None)], quality, primary, max_identical)


def group_near_duplicates(
    ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    hashes: Mapping[str, np.ndarray],
    rules: Sequence[tuple[Sequence[Clause], np.ndarray | None]],
    quality: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    primary: str = "phash",
    max_identical: int = MAX_IDENTICAL,
) -> pa.Table:
    """Like :func:`find_near_duplicates`, with several rules, each applied to the pairs inside
    a subset (a boolean mask aligned with ``ids``; ``None`` = all images). The pairs of all
    rules are merged before grouping, so a group may join images through different rules."""
    id_arr = _validate(ids, hashes)
    codes = {k: np.asarray(v, dtype=np.uint64).reshape(-1) for k, v in hashes.items()}
    if len(id_arr) < 2 or not codes:
        return OUTPUT_SCHEMA.empty_table()
    edges_i, edges_j = [], []
    for clauses, mask in rules:
        if mask is None:
            ei, ej = rule_pairs(codes, clauses, max_identical)
        else:
            sub = np.flatnonzero(np.asarray(mask, dtype=bool))
            if sub.size < 2:
                continue
            si, sj = rule_pairs({k: v[sub] for k, v in codes.items()}, clauses, max_identical)
            ei, ej = sub[si], sub[sj]
        edges_i.append(ei)
        edges_j.append(ej)
    ei = np.concatenate(edges_i) if edges_i else np.zeros(0, dtype=np.int64)
    ej = np.concatenate(edges_j) if edges_j else np.zeros(0, dtype=np.int64)
    labels = connected_components(len(id_arr), ei, ej)
    sizes = np.bincount(labels, minlength=len(id_arr))[labels]
    canon = choose_canonicals(id_arr, labels, quality)
    prim = codes[primary] if primary in codes else next(iter(codes.values()))
    keep = np.flatnonzero(sizes >= 2)
    keep = keep[pc.sort_indices(id_arr.take(pa.array(keep, pa.int64()))).to_numpy()]
    return pa.table(
        {
            "image_id": id_arr.take(pa.array(keep, pa.int64())),
            "dup_group_id": id_arr.take(pa.array(canon[keep], pa.int64())),
            "is_canonical": pa.array(canon[keep] == keep, pa.bool_()),
            "dup_group_size": pa.array(sizes[keep].astype(np.int32), pa.int32()),
            "hash_distance_to_canonical": pa.array(
                hamming(prim[keep], prim[canon[keep]]).astype(np.int32), pa.int32()
            ),
        },
        schema=OUTPUT_SCHEMA,
    )
