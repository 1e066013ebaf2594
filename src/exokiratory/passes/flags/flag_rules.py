"""Flag rules of the ``flags`` family itself: perceptual-hash near duplicates, and the final
routing decision ``is_worth_gpu``.

* Near duplicates: groups from the perceptual hashes of PASS 1 (:mod:`.neardup`):
  ``dup_group_id`` (the canonical's image_id), ``dup_group_size``, ``is_dup_canonical``,
  ``hash_distance_to_canonical``; ``is_near_duplicate`` = member of a group but not its
  canonical. Documents and flat graphics (PASS 1 ``text_likeness_score`` >=
  ``text_heavy_threshold``, or ``noise_score`` < ``strict_noise_threshold``) all look alike to
  perceptual hashes (white page, black lines): a pair that involves one is accepted only under
  a strict rule (``strict_near_duplicate_thresholds``: phash <= 4 AND dhash <= 8), which still
  joins a rescaled or recompressed copy of a page, and a smoothed or darkened copy of a photo
  (which can fall under the noise cut) to its original. Both rules also require the alpha hashes
  (PASS 1 ``alpha_phash``: the silhouette of an image with transparency, 0 for opaque images
  and for rows sensed before it existed) to be within ``ALPHA_HASH_THRESHOLD`` (12; a key
  ``alpha_phash`` in ``near_duplicate_thresholds`` overrides it): transparent overlays that
  composite to the same image over white (e.g. white shapes) are not duplicates unless their
  shapes match. Opaque pairs always pass it. The search is exact at the thresholds given at any
  collection size (10^6 images at the defaults: well under two minutes, see
  :mod:`.hamming_search`). A cap is opt-in only: with ``near_duplicate_large_n`` set, above that
  many images every threshold is capped at ``near_duplicate_large_max_threshold``, with a
  warning (and the cap is part of the cached groups' key).
* ``is_worth_gpu`` = readable, sensed, not junk, not a non-canonical near duplicate, and (when
  ``route_out_semantic_duplicates``) not a non-canonical semantic duplicate. The
  ``images_routed`` view holds the images worth GPU time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from exokiratory.core.storage import Storage
from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.engine.step import PassParams
from exokiratory.passes.flags.inputs import flags_input_sql, sensed_rows
from exokiratory.passes.flags.neardup import (
    QUALITY_COLUMNS,
    group_near_duplicates,
    make_clauses,
    with_checks,
)
from exokiratory.passes.flags.semantic import TextHeavyParams
from exokiratory.passes.sense.alpha import ALPHA_HASH_COLUMN
from exokiratory.passes.sense.hashes import HASH_COLUMNS

log = logging.getLogger(__name__)

NEARDUP_VERSION = "neardup-v2"  # v2: the alpha hash check

ALPHA_HASH_THRESHOLD = 12
"""Max Hamming distance of the alpha hashes of two near duplicates (different silhouettes are
~24-40 bits apart, a rescaled copy 0-2)."""


class NearDupParams(TextHeavyParams):
    """Thresholds of the hash near duplicates (``text_heavy_threshold`` is the text-heavy
    flag's, applied to PASS 1 text likeness)."""

    near_duplicate_thresholds: dict[str, int] = Field(
        default_factory=lambda: {"phash": 12, "dhash": 16, "phash_center": 8},
        description="Hamming thresholds of the near-duplicate rule (see exokiratory.passes.flags.neardup)",
    )
    strict_near_duplicate_thresholds: dict[str, int] = Field(
        default_factory=lambda: {"phash": 4, "dhash": 8},
        description="both must hold, for text-heavy and flat (synthetic) images",
    )
    strict_noise_threshold: float = Field(
        0.6, ge=0, description="images with noise_score below this are 'flat' (graphics, UI)"
    )
    near_duplicate_large_n: int | None = Field(
        None,
        ge=2,
        description="opt-in: above this many images, cap the thresholds (None: never capped)",
    )
    near_duplicate_large_max_threshold: int = Field(
        8, ge=0, le=64, description="the cap applied above near_duplicate_large_n images"
    )


class RoutingParams(PassParams):
    """What the routing leaves out besides junk and hash near duplicates."""

    route_out_semantic_duplicates: bool = Field(
        True, description="non-canonical semantic duplicates are not worth GPU time"
    )


class NearDupCache:
    """Near-duplicate groups depend only on the hashes and the near-duplicate parameters, and
    their search is the one costly step of the flags (see :mod:`.neardup`): they are kept in
    ``<flags>/_neardup/<digest>.parquet``, so changing any other threshold re-derives the flags
    in seconds at any collection size."""

    def __init__(self, storage: Storage, dataset: str, inputs: Sequence[str], p: NearDupParams):
        self.storage = storage
        h = hashlib.sha256(NEARDUP_VERSION.encode())
        keys = (
            "near_duplicate_thresholds",
            "strict_near_duplicate_thresholds",
            "strict_noise_threshold",
            "text_heavy_threshold",
            "near_duplicate_large_n",
            "near_duplicate_large_max_threshold",
        )
        h.update(json.dumps({k: getattr(p, k) for k in keys}, sort_keys=True).encode())
        h.update(storage.listing_digest(inputs, ".parquet").encode())
        self.folder = f"{dataset}/_neardup"
        self.rel = f"{self.folder}/{h.hexdigest()[:16]}.parquet"

    def get(self) -> pa.Table | None:
        if not self.storage.exists(self.rel):
            return None
        return self.storage.read_parquet(self.rel)

    def put(self, table: pa.Table) -> None:
        for old in self.storage.list_files(self.folder, ".parquet"):
            self.storage.remove(old)
        self.storage.write_parquet_atomic(self.rel, table)


#: the PASS 1 columns the near-duplicate groups read
NEARDUP_FEATURES: tuple[str, ...] = (
    *HASH_COLUMNS,
    ALPHA_HASH_COLUMN,
    "text_likeness_score",
    "noise_score",
    *QUALITY_COLUMNS,
)


def _neardup_cache(source: FlagSource) -> NearDupCache:
    """The cache, keyed by the manifests' and PASS 1's part files (where the hashes are),
    filled when empty from a narrow copy of the flags' input rows (the near-duplicate columns
    only): an early input, so at 10^7 images the search never sits next to the whole input
    table and the other rules' columns."""
    hash_inputs = [i for i in source.inputs if i.startswith(("manifests/", "features/global"))]
    p: NearDupParams = source.params  # type: ignore[assignment]  # the composed FlagsParams
    cache = NearDupCache(source.catalog.storage, source.dataset, hash_inputs, p)
    if not cache.storage.exists(cache.rel):
        t = source.catalog.query(flags_input_sql(NEARDUP_FEATURES))
        search = NearDupSearch.of(t, sensed_rows(t), p)
        del t  # the search holds its numpy columns only
        cache.put(search.groups())
    return cache


NEARDUP_CACHE = FlagInput("neardup_cache", _neardup_cache, early=True)


def near_duplicates(t: pa.Table, sensed: np.ndarray, p: NearDupParams) -> pa.Table:
    """Near-duplicate groups among sensed images: the default (loose) rule between photos, and
    the strict rule between any two images; documents and flat graphics therefore pair only
    under the strict rule, while a flat copy of a photo (blurred, darkened) still joins it."""
    return NearDupSearch.of(t, sensed, p).groups()


@dataclass
class NearDupSearch:
    """What the search reads, as numpy columns of the sensed rows (one column at a time is
    taken from the input table: no copy of the table; its caller can drop the table before
    :meth:`groups`)."""

    ids: pa.Array
    hashes: dict[str, np.ndarray]
    quality: dict[str, np.ndarray]
    strict: np.ndarray
    p: NearDupParams

    @classmethod
    def of(cls, t: pa.Table, sensed: np.ndarray, p: NearDupParams) -> NearDupSearch:
        rows = None if bool(np.all(sensed)) else pa.array(np.flatnonzero(sensed), pa.int64())

        def col(name: str) -> pa.ChunkedArray | pa.Array:
            c = t.column(name)
            return c if rows is None else c.take(rows)

        def num(name: str, dtype: type = np.float64) -> np.ndarray:
            return col(name).to_numpy(zero_copy_only=False).astype(dtype)

        with np.errstate(invalid="ignore"):
            strict = (num("text_likeness_score") >= p.text_heavy_threshold) | (
                num("noise_score") < p.strict_noise_threshold
            )
        hashes = {h: num(h, np.uint64) for h in HASH_COLUMNS}
        alpha = col(ALPHA_HASH_COLUMN) if ALPHA_HASH_COLUMN in t.column_names else None
        hashes[ALPHA_HASH_COLUMN] = _alpha_hashes(alpha, len(strict))
        ids = col("image_id")
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        return cls(ids, hashes, {c: num(c) for c in QUALITY_COLUMNS}, strict, p)

    def groups(self) -> pa.Table:
        p = self.p
        loose_t = dict(p.near_duplicate_thresholds)
        tight_t = dict(p.strict_near_duplicate_thresholds)
        alpha_t = loose_t.pop(ALPHA_HASH_COLUMN, ALPHA_HASH_THRESHOLD)
        tight_t.pop(ALPHA_HASH_COLUMN, None)
        if p.near_duplicate_large_n is not None and len(self.ids) > p.near_duplicate_large_n:
            cap = p.near_duplicate_large_max_threshold
            log.warning(
                "near duplicates among %d images: capping hash thresholds at %d (as set by "
                "passes.flags.near_duplicate_large_n; unset it for the exact thresholds)",
                len(self.ids),
                cap,
            )
            loose_t = {k: min(v, cap) for k, v in loose_t.items()}
            tight_t = {k: min(v, cap) for k, v in tight_t.items()}
        checks = [(ALPHA_HASH_COLUMN, int(alpha_t))]
        loose = with_checks(make_clauses(loose_t, None), checks)
        tight = with_checks(make_clauses(tight_t, [tuple(tight_t)]), checks)
        rules = [(loose, ~self.strict), (tight, None)]
        return group_near_duplicates(self.ids, self.hashes, rules, quality=self.quality)


def _alpha_hashes(column: pa.ChunkedArray | pa.Array | None, n: int) -> np.ndarray:
    """The alpha hash column as uint64, 0 (opaque) where null or absent (old parts)."""
    if column is None:
        return np.zeros(n, dtype=np.uint64)
    filled = pc.fill_null(column, 0)
    return np.asarray(filled.to_numpy(zero_copy_only=False)).astype(np.uint64)


@flag_rule(
    "near_duplicates",
    [
        pa.field("dup_group_id", pa.string()),
        pa.field("dup_group_size", pa.int32()),
        pa.field("is_dup_canonical", pa.bool_()),
        pa.field("hash_distance_to_canonical", pa.int32()),
        pa.field("is_near_duplicate", pa.bool_()),
    ],
    order=70,
    params=NearDupParams,
    features=NEARDUP_FEATURES,
    inputs=(NEARDUP_CACHE,),
    reads=("sense",),
)
def near_duplicate_columns(frame: FlagFrame, p: NearDupParams) -> Columns:
    """Each row's hash near-duplicate group (nulls outside any group)."""
    cache: NearDupCache | None = frame.input("neardup_cache")
    dups = cache.get() if cache is not None else None
    if dups is None:
        dups = near_duplicates(frame.table, frame.sensed, p)
        if cache is not None:
            cache.put(dups)
    row = pc.index_in(frame.table.column("image_id"), value_set=dups.column("image_id"))

    def take(name: str) -> pa.Array:
        return pc.take(dups.column(name), row).combine_chunks()

    canonical = take("is_canonical")
    member = pc.is_valid(row).to_numpy(zero_copy_only=False)
    return {
        "dup_group_id": take("dup_group_id"),
        "dup_group_size": take("dup_group_size"),
        "is_dup_canonical": canonical,
        "hash_distance_to_canonical": take("hash_distance_to_canonical"),
        "is_near_duplicate": member & ~pc.fill_null(canonical, True).to_numpy(zero_copy_only=False),
    }


@flag_rule(
    "worth_gpu",
    [pa.field("is_worth_gpu", pa.bool_())],
    order=91,
    params=RoutingParams,
    needs=("is_junk", "is_near_duplicate", "is_semantic_duplicate"),
)
def worth_gpu(frame: FlagFrame, p: RoutingParams) -> Columns:
    """The routing decision (see the module docstring)."""
    ok = pc.fill_null(pc.equal(frame.table.column("status"), "ok"), False)
    worth = (
        ok.to_numpy(zero_copy_only=False).astype(bool)
        & frame.sensed
        & ~frame["is_junk"]
        & ~frame["is_near_duplicate"]
    )
    if p.route_out_semantic_duplicates:
        worth &= ~frame["is_semantic_duplicate"]
    return {"is_worth_gpu": worth}
