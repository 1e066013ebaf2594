"""PASS 2 routing flags, derived from stored PASS 0/1 outputs (never from pixels).

Every flag is a boolean ``is_*`` column next to the ``*_score`` it was cut from; the thresholds
live in the workspace config (``passes.flags``) and are recorded in every row (``flags_params``).

Definitions (scores from features/global, see :mod:`exokiratory.passes.sense.signals`):

* ``dark_score`` = brightness p99 (grey, 0..1); ``is_dark`` when < ``dark_threshold`` (0.32,
  cleanvision's definition and default).
* ``light_score`` = 1 - brightness p05; ``is_light`` when < ``light_threshold`` (0.05, as
  cleanvision).
* ``blurry_score`` = the Crete-Roffet re-blur score (0 sharp .. 1 blurry); ``is_blurry`` when >
  ``blurry_threshold`` (0.5: real photos score 0.12-0.33, a Gaussian blur of radius 5 px at the
  256-px working size 0.5-0.8), except near-blank images (blur is undefined there; they are
  junk already). Differs from cleanvision, which thresholds the variance of PIL's FIND_EDGES
  and finds 1 of 5 Gaussian blurs where this finds 4 (bench/flags_agreement.py).
* ``low_information_score`` = grey entropy / 8 bits; ``is_low_information`` when <
  ``low_information_threshold`` (0.3). cleanvision uses the entropy of PIL's 768-bin RGB
  histogram x 0.1 with the same 0.3 cut.
* ``grayscale_score`` = mean Lab chroma of the working image; ``is_grayscale`` when <=
  ``grayscale_threshold`` (2.0). Unlike cleanvision (mode ``L`` only) this catches grey images
  stored as RGB or palette: on purpose, since they are what costs colour models time.
* ``aspect_ratio_score`` = min(w/h, h/w); ``is_odd_aspect_ratio`` when < 0.35 (as cleanvision).
* ``size_score`` = sqrt(w*h); ``is_odd_size`` when log(size_score) is outside
  [Q1 - k*IQR, Q3 + k*IQR] of the collection, k = ``odd_size_iqr_factor`` (3.0). cleanvision
  applies the same fence to the linear size, whose lower fence is usually negative, so it can
  never flag a thumbnail; image sizes are closer to log-normal.
* ``is_tiny`` when min(w, h) < ``tiny_min_side`` px (32).
* ``is_corrupt``: unreadable in PASS 0, or failed to decode in PASS 1 / probe; ``corrupt_reason``.
* near duplicates: groups from the perceptual hashes (:mod:`exokiratory.passes.flags.neardup`):
  ``dup_group_id`` (the canonical's image_id), ``dup_group_size``, ``is_dup_canonical``,
  ``hash_distance_to_canonical``; ``is_near_duplicate`` = member of a group but not its
  canonical. Exact duplicates are one image with several paths: ``n_paths``,
  ``has_exact_duplicates``.
* ``outlier_score`` = max over cheap features of the robust z-score |x - median| / (1.4826 MAD);
  ``is_outlier`` when > ``outlier_threshold`` (6.0) in a collection of at least
  ``outlier_min_images`` (20).
* ``text_heavy_score``, ``is_text_heavy`` and the other semantic flags (``modality``,
  ``is_photo`` / ``is_scan`` / ``is_graphic``, ``is_human_present``, ``is_dense_scene``): see
  :mod:`exokiratory.passes.flags.semantic`; they also read the ``cues`` pass and the ``zeroshot``
  derivation when these exist. Without them ``text_heavy_score`` = text_likeness_score and
  ``is_text_heavy`` when >= ``text_heavy_threshold`` (0.6).
  Documents and flat graphics (text-heavy, or ``noise_score`` < ``strict_noise_threshold``) all
  look alike to perceptual hashes (white page, black lines): a pair that involves one is
  accepted only under a strict rule (``strict_near_duplicate_thresholds``: phash <= 4 AND
  dhash <= 8), which still joins a rescaled or recompressed copy of a page, and a smoothed or
  darkened copy of a photo (which can fall under the noise cut) to its original.
  Above ``near_duplicate_large_n`` images (100,000) every threshold is capped at
  ``near_duplicate_large_max_threshold`` (8), with a warning: exact multi-index search at 12
  bits does not finish in minutes on 10^6 codes; at 8 it takes about 20 s.
* ``is_junk`` = corrupt, tiny, or near-blank (``low_information_score`` <
  ``junk_information_threshold`` = 0.12, about 1 bit: a low-information threshold of 0.3 also
  catches logos and flat graphics, which are not junk). ``is_worth_gpu`` = readable, not junk,
  and not a non-canonical near duplicate. The ``images_routed`` view holds the images worth GPU
  time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.core.robust import median_sigma
from exokiratory.core.storage import Storage
from exokiratory.passes.flags.embedding import (
    SEMANTIC_DUP_SCHEMA,
    KnnCache,
    SpaceVectors,
    high_side_robust_z,
    knn_distance,
    semantic_duplicates,
)
from exokiratory.passes.flags.neardup import group_near_duplicates, make_clauses
from exokiratory.passes.flags.semantic import (
    PASS1_COLUMNS,
    SEMANTIC_FIELDS,
    SemanticFlagsParams,
    semantic_flag_columns,
)
from exokiratory.passes.sense.hashes import HASH_COLUMNS

log = logging.getLogger(__name__)

OUTLIER_FEATURES: tuple[str, ...] = (
    "brightness_p50",
    "std_r",
    "std_g",
    "std_b",
    "colorfulness_score",
    "saturation_mean",
    "entropy_score",
    "log_sharpness",
    "log_noise",
    "edge_density",
    "high_freq_ratio",
    "spectral_slope",
    "blur_score",
)


class FlagsParams(SemanticFlagsParams):
    dark_threshold: float = Field(0.32, ge=0, le=1)
    light_threshold: float = Field(0.05, ge=0, le=1)
    blurry_threshold: float = Field(0.5, ge=0, le=1)
    low_information_threshold: float = Field(0.3, ge=0, le=1)
    grayscale_threshold: float = Field(2.0, ge=0)
    odd_aspect_ratio_threshold: float = Field(0.35, ge=0, le=1)
    odd_size_iqr_factor: float = Field(3.0, gt=0)
    tiny_min_side: int = Field(32, ge=1)
    outlier_threshold: float = Field(6.0, gt=0)
    outlier_min_images: int = Field(20, ge=3)
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
    near_duplicate_large_n: int = Field(
        100_000, ge=2, description="above this many images, cap the searched thresholds"
    )
    near_duplicate_large_max_threshold: int = Field(
        8, ge=0, le=16, description="cap on every rule threshold for large collections"
    )
    junk_information_threshold: float = Field(
        0.12, ge=0, le=1, description="low_information_score below this is junk (near-blank)"
    )
    semantic_duplicate_threshold: float = Field(
        0.95, gt=0, le=1, description="cosine similarity of semantic near-duplicates"
    )
    semantic_duplicate_space: Literal["clip", "dino"] = "clip"
    semantic_duplicate_cluster_size: int = Field(
        1000, ge=2, description="images per k-means cluster searched for semantic duplicates"
    )
    route_out_semantic_duplicates: bool = Field(
        True, description="non-canonical semantic duplicates are not worth GPU time"
    )
    embedding_outlier_k: int = Field(10, ge=1, le=1000)
    embedding_outlier_threshold: float = Field(4.0, gt=0)


FLAGS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("is_corrupt", pa.bool_()),
        pa.field("corrupt_reason", pa.string()),
        pa.field("dark_score", pa.float32()),
        pa.field("is_dark", pa.bool_()),
        pa.field("light_score", pa.float32()),
        pa.field("is_light", pa.bool_()),
        pa.field("blurry_score", pa.float32()),
        pa.field("is_blurry", pa.bool_()),
        pa.field("low_information_score", pa.float32()),
        pa.field("is_low_information", pa.bool_()),
        pa.field("grayscale_score", pa.float32()),
        pa.field("is_grayscale", pa.bool_()),
        pa.field("aspect_ratio_score", pa.float32()),
        pa.field("is_odd_aspect_ratio", pa.bool_()),
        pa.field("size_score", pa.float32()),
        pa.field("is_odd_size", pa.bool_()),
        pa.field("is_tiny", pa.bool_()),
        pa.field("text_heavy_score", pa.float32()),
        pa.field("is_text_heavy", pa.bool_()),
        pa.field("outlier_score", pa.float32()),
        pa.field("is_outlier", pa.bool_()),
        *SEMANTIC_FIELDS,
        pa.field("n_paths", pa.int64()),
        pa.field("has_exact_duplicates", pa.bool_()),
        pa.field("dup_group_id", pa.string()),
        pa.field("dup_group_size", pa.int32()),
        pa.field("is_dup_canonical", pa.bool_()),
        pa.field("hash_distance_to_canonical", pa.int32()),
        pa.field("is_near_duplicate", pa.bool_()),
        pa.field("semantic_dup_group_id", pa.string()),
        pa.field("semantic_dup_group_size", pa.int32()),
        pa.field("is_semantic_dup_canonical", pa.bool_()),
        pa.field("semantic_similarity_to_canonical", pa.float32()),
        pa.field("is_semantic_duplicate", pa.bool_()),
        pa.field("knn_distance_clip", pa.float32()),
        pa.field("knn_distance_dino", pa.float32()),
        pa.field("embedding_outlier_score", pa.float32()),
        pa.field("is_embedding_outlier", pa.bool_()),
        pa.field("is_junk", pa.bool_()),
        pa.field("is_worth_gpu", pa.bool_()),
        pa.field("flags_version", pa.string()),
        pa.field("flags_params", pa.string()),
    ]
)

#: PASS 1 columns the flags read (scalars and hashes only: never the histogram lists).
FEATURE_COLUMNS: tuple[str, ...] = (
    "width",
    "height",
    "megapixels",
    "size_bytes",
    "sharpness_score",
    "noise_score",
    "brightness_p05",
    "brightness_p99",
    "grayscale_score",
    "text_likeness_score",
    *HASH_COLUMNS,
    *(c for c in OUTLIER_FEATURES if not c.startswith("log_")),
    *PASS1_COLUMNS,
)

FLAGS_INPUT_SQL = (
    """
SELECT i.image_id, i.image_idx, i.status, i.error AS scan_error, i.n_paths,
       """
    + ", ".join(f"f.{c}" for c in dict.fromkeys(FEATURE_COLUMNS))
    + """, f.error AS sense_error
       {probe_cols}
FROM images i
LEFT JOIN features f USING (image_id)
{probe_join}
ORDER BY i.image_idx
"""
)


def _col(t: pa.Table, name: str, dtype: type = np.float64) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False).astype(dtype)


def _robust_z(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    stats = median_sigma(x)
    if stats is None:
        return np.zeros_like(x)
    med, mad = stats
    if mad <= 1e-12:
        # a constant feature: only values that differ at all are "infinitely" far; cap them
        return np.where(ok & (np.abs(x - med) > 1e-9), 1e3, 0.0)
    z = np.abs(x - med) / mad
    return np.where(ok, z, 0.0)


def outlier_scores(t: pa.Table, min_images: int) -> np.ndarray:
    n = t.num_rows
    feats = {name: _col(t, name) for name in OUTLIER_FEATURES if name in t.column_names}
    feats["log_sharpness"] = np.log1p(np.maximum(_col(t, "sharpness_score"), 0))
    feats["log_noise"] = np.log1p(np.maximum(_col(t, "noise_score"), 0))
    valid = np.isfinite(feats["entropy_score"])
    if valid.sum() < min_images:
        return np.full(n, np.nan)
    z = np.zeros(n)
    for name in OUTLIER_FEATURES:
        z = np.maximum(z, _robust_z(feats[name]))
    return np.where(valid, z, np.nan)


class NearDupCache:
    """Near-duplicate groups depend only on the hashes and the near-duplicate parameters, and
    their search is the one costly step of the flags (see :mod:`exokiratory.passes.flags.neardup`): they are
    kept in ``<flags>/_neardup/<digest>.parquet``, so changing any other threshold re-derives
    the flags in seconds at any collection size."""

    def __init__(self, storage: Storage, dataset: str, inputs: Sequence[str], p: FlagsParams):
        self.storage = storage
        h = hashlib.sha256(NEARDUP_VERSION.encode())
        keys = (
            "near_duplicate_thresholds",
            "strict_near_duplicate_thresholds",
            "strict_noise_threshold",
            "text_heavy_threshold",
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


NEARDUP_VERSION = "neardup-v1"


def derive_flags(
    t: pa.Table,
    p: FlagsParams,
    version: str,
    dup_cache: NearDupCache | None = None,
    spaces: Mapping[str, SpaceVectors] | None = None,
    semantic: pa.Table | None = None,
    knn_cache: KnnCache | None = None,
) -> pa.Table:
    """Flags for every registered image, from the joined input table (see FLAGS_INPUT_SQL);
    ``semantic``: cue and zero-shot inputs aligned with it (:mod:`exokiratory.passes.flags.semantic`)."""
    n = t.num_rows
    ids = t.column("image_id").to_pylist()
    status = np.array(t.column("status").to_pylist(), dtype=object)
    sense_err = t.column("sense_error").to_pylist()
    probe_err = (
        t.column("probe_error").to_pylist() if "probe_error" in t.column_names else [None] * n
    )
    scan_err = t.column("scan_error").to_pylist()
    corrupt_reason = [
        se if st == "unreadable" else (e1 or e2)
        for st, se, e1, e2 in zip(status, scan_err, sense_err, probe_err, strict=True)
    ]
    is_corrupt = np.array([r is not None for r in corrupt_reason])
    sensed = np.array([e is None for e in sense_err]) & np.isfinite(_col(t, "entropy_score"))

    w, h = _col(t, "width"), _col(t, "height")
    dark = _col(t, "brightness_p99")
    light = 1.0 - _col(t, "brightness_p05")
    blurry = _col(t, "blur_score")
    low_info = _col(t, "entropy_score") / 8.0
    grey = _col(t, "grayscale_score")
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.minimum(w / h, h / w)
        size = np.sqrt(w * h)
    odd_size = np.zeros(n, dtype=bool)
    if sensed.sum() >= 4:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_size = np.log(size)
        q1, q3 = np.percentile(log_size[sensed], [25, 75])
        k = p.odd_size_iqr_factor * (q3 - q1)
        odd_size = sensed & ((log_size < q1 - k) | (log_size > q3 + k))
    outlier = outlier_scores(t, p.outlier_min_images)

    def flag(score: np.ndarray, cond: np.ndarray) -> np.ndarray:
        return sensed & np.nan_to_num(cond, nan=0).astype(bool) & np.isfinite(score)

    with np.errstate(invalid="ignore"):
        is_dark = flag(dark, dark < p.dark_threshold)
        is_light = flag(light, light < p.light_threshold)
        blank = low_info < p.junk_information_threshold
        is_blurry = flag(blurry, (blurry > p.blurry_threshold) & ~blank)
        is_low_info = flag(low_info, low_info < p.low_information_threshold)
        is_grey = flag(grey, grey <= p.grayscale_threshold)
        is_odd_ar = flag(aspect, aspect < p.odd_aspect_ratio_threshold)
        is_tiny = flag(w, np.minimum(w, h) < p.tiny_min_side)
        is_outlier = flag(outlier, outlier > p.outlier_threshold)

    dups = dup_cache.get() if dup_cache is not None else None
    if dups is None:
        dups = near_duplicates(t, sensed, p)
        if dup_cache is not None:
            dup_cache.put(dups)
    by_id = {r["image_id"]: r for r in dups.to_pylist()}
    dup_rows = [by_id.get(i) for i in ids]
    is_near_dup = np.array([r is not None and not r["is_canonical"] for r in dup_rows])
    n_paths = _col(t, "n_paths", np.int64)
    is_junk = is_corrupt | is_tiny | flag(low_info, low_info < p.junk_information_threshold)
    emb = embedding_flag_columns(t, p, spaces or {}, knn_cache)
    worth = (status == "ok") & sensed & ~is_junk & ~is_near_dup
    if p.route_out_semantic_duplicates:
        worth &= ~emb["is_semantic_duplicate"]
    sem = semantic_flag_columns(t, p, sensed, semantic)
    params = json.dumps(p.model_dump(mode="json"), sort_keys=True)
    return pa.table(
        {
            "image_id": ids,
            "image_idx": t.column("image_idx"),
            "is_corrupt": is_corrupt,
            "corrupt_reason": corrupt_reason,
            "dark_score": _f32(dark),
            "is_dark": is_dark,
            "light_score": _f32(light),
            "is_light": is_light,
            "blurry_score": _f32(blurry),
            "is_blurry": is_blurry,
            "low_information_score": _f32(low_info),
            "is_low_information": is_low_info,
            "grayscale_score": _f32(grey),
            "is_grayscale": is_grey,
            "aspect_ratio_score": _f32(aspect),
            "is_odd_aspect_ratio": is_odd_ar,
            "size_score": _f32(size),
            "is_odd_size": odd_size,
            "is_tiny": is_tiny,
            "text_heavy_score": sem["text_heavy_score"],
            "is_text_heavy": sem["is_text_heavy"],
            "outlier_score": _f32(outlier),
            "is_outlier": is_outlier,
            **{f.name: sem[f.name] for f in SEMANTIC_FIELDS},
            "n_paths": n_paths,
            "has_exact_duplicates": n_paths > 1,
            "dup_group_id": [r["dup_group_id"] if r else None for r in dup_rows],
            "dup_group_size": [r["dup_group_size"] if r else None for r in dup_rows],
            "is_dup_canonical": [r["is_canonical"] if r else None for r in dup_rows],
            "hash_distance_to_canonical": [
                r["hash_distance_to_canonical"] if r else None for r in dup_rows
            ],
            "is_near_duplicate": is_near_dup,
            **emb,
            "is_junk": is_junk,
            "is_worth_gpu": worth,
            "flags_version": [version] * n,
            "flags_params": [params] * n,
        },
        schema=FLAGS_SCHEMA,
    )


def embedding_flag_columns(
    t: pa.Table,
    p: FlagsParams,
    spaces: Mapping[str, SpaceVectors],
    knn_cache: KnnCache | None = None,
) -> dict[str, Any]:
    """Semantic near-duplicate and k-NN outlier columns (see :mod:`exokiratory.passes.flags.embedding`),
    aligned with ``t``; nulls (and False flags) where an image has no embedding."""
    n = t.num_rows
    ids = t.column("image_id").to_pylist()
    pos = {image_id: i for i, image_id in enumerate(ids)}
    cols: dict[str, Any] = {name: [None] * n for name in SEMANTIC_DUP_SCHEMA.names[1:]}
    is_sem_dup = np.zeros(n, bool)
    space: str = p.semantic_duplicate_space
    if space not in spaces and spaces:
        space = next(iter(spaces))
    if space in spaces:
        sv = spaces[space]
        rows = np.array([pos.get(i, -1) for i in sv.ids])
        quality = {
            name: np.where(rows >= 0, _col(t, name)[rows], np.nan)
            for name in ("megapixels", "sharpness_score", "size_bytes")
        }
        groups = semantic_duplicates(
            sv, p.semantic_duplicate_threshold, p.semantic_duplicate_cluster_size, quality
        )
        for r in groups.to_pylist():
            i = pos.get(r["image_id"])
            if i is None:
                continue
            for name in cols:
                cols[name][i] = r[name]
            is_sem_dup[i] = not r["is_semantic_dup_canonical"]
    knn = {}
    z = np.zeros(n)
    for name in ("clip", "dino"):
        d = np.full(n, np.nan)
        if name in spaces:
            sv = spaces[name]
            rows = np.array([pos.get(i, -1) for i in sv.ids])
            dist = (
                knn_cache.distances(sv, p.embedding_outlier_k)
                if knn_cache is not None
                else knn_distance(sv.vectors, p.embedding_outlier_k)
            )
            d[rows[rows >= 0]] = dist[rows >= 0]
            z = np.maximum(z, high_side_robust_z(d))
        knn[f"knn_distance_{name}"] = _f32(d)
    has_any = np.zeros(n, bool)
    for name in spaces:
        has_any[[pos[i] for i in spaces[name].ids if i in pos]] = True
    enough = has_any.sum() >= p.outlier_min_images
    score = np.where(has_any & enough, z, np.nan)
    with np.errstate(invalid="ignore"):
        is_emb_outlier = np.nan_to_num(score > p.embedding_outlier_threshold, nan=0).astype(bool)
    return {
        **cols,
        "is_semantic_duplicate": is_sem_dup,
        **knn,
        "embedding_outlier_score": _f32(score),
        "is_embedding_outlier": is_emb_outlier,
    }


def _f32(x: np.ndarray) -> pa.Array:
    return pa.array(
        np.where(np.isfinite(x), x, np.nan).astype(np.float32), pa.float32(), from_pandas=True
    )


def near_duplicates(t: pa.Table, sensed: np.ndarray, p: FlagsParams) -> pa.Table:
    """Near-duplicate groups among sensed images: the default (loose) rule between photos, and
    the strict rule between any two images; documents and flat graphics therefore pair only
    under the strict rule, while a flat copy of a photo (blurred, darkened) still joins it."""
    with np.errstate(invalid="ignore"):
        strict = (_col(t, "text_likeness_score") >= p.text_heavy_threshold) | (
            _col(t, "noise_score") < p.strict_noise_threshold
        )
    idx = np.flatnonzero(sensed)
    sub = t.take(pa.array(idx, pa.int64()))
    ids = sub.column("image_id").to_pylist()
    hashes = {
        h: sub.column(h).to_numpy(zero_copy_only=False).astype(np.uint64) for h in HASH_COLUMNS
    }
    quality = {name: _col(sub, name) for name in ("megapixels", "sharpness_score", "size_bytes")}
    loose_t, tight_t = dict(p.near_duplicate_thresholds), dict(p.strict_near_duplicate_thresholds)
    if len(ids) > p.near_duplicate_large_n:
        cap = p.near_duplicate_large_max_threshold
        log.warning(
            "near duplicates among %d images: capping hash thresholds at %d (exact search at "
            "larger thresholds does not scale; see passes.flags.near_duplicate_large_n)",
            len(ids),
            cap,
        )
        loose_t = {k: min(v, cap) for k, v in loose_t.items()}
        tight_t = {k: min(v, cap) for k, v in tight_t.items()}
    loose = make_clauses(loose_t, None)
    tight = make_clauses(tight_t, [tuple(tight_t)])
    rules = [(loose, ~strict[idx]), (tight, None)]
    return group_near_duplicates(ids, hashes, rules, quality=quality)
