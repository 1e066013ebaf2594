"""Flag rules of the ``embed`` family: semantic near-duplicates and embedding outliers.

Both read the stored global embeddings (``embed-clip`` / ``embed-dino``), never pixels; the
algorithms (SemDeDup-style duplicate search, k-NN distances) are in
:mod:`exokiratory.passes.flags.embedding`, whose docstring defines every column. Rows without an
embedding (and every row when only a random-weight ``tiny`` model's embeddings exist) get
nulls and False flags. ``embedding_outlier_score`` is "higher = more of an outlier";
``semantic_similarity_to_canonical`` is a similarity, not a score.

Memory: the ``embeddings`` side input spills each space to a float16 temporary file (never a
whole float32 matrix; see the memory paragraph of :mod:`exokiratory.passes.flags.embedding`);
vectors are matched to the frame's rows with ``pyarrow.compute.index_in`` on the Arrow ids (no
per-image Python dict or list). Above ``EXACT_KNN_MAX`` images the duplicate rule computes the
outlier rule's two-cluster k-NN distances of its space in the same pass over the clusters
(unless the k-NN cache already holds them); the outlier rule reads them from the space's memo.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from exokiratory.core.robust import high_side_robust_z
from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.passes.flags.embedding import (
    EXACT_KNN_MAX,
    SEMANTIC_DUP_SCHEMA,
    SPACES,
    KnnCache,
    SpaceVectors,
    frame_rows,
    load_spaces,
    semantic_duplicates,
    space_knn,
)
from exokiratory.passes.flags.neardup import QUALITY_COLUMNS
from exokiratory.passes.sense.flag_rules import OutlierParams


class EmbeddingFlagParams(OutlierParams):
    """Thresholds of the embedding flags (``outlier_min_images`` is the feature outliers')."""

    semantic_duplicate_threshold: float = Field(
        0.95, gt=0, le=1, description="cosine similarity of semantic near-duplicates"
    )
    semantic_duplicate_space: Literal["clip", "dino"] = "clip"
    semantic_duplicate_cluster_size: int = Field(
        1000, ge=2, description="images per k-means cluster searched for semantic duplicates"
    )
    embedding_outlier_k: int = Field(10, ge=1, le=1000)
    embedding_outlier_threshold: float = Field(4.0, gt=0)


def _spaces(source: FlagSource) -> dict[str, SpaceVectors]:
    return load_spaces(source.catalog) if importlib.util.find_spec("faiss") is not None else {}


def _knn_cache(source: FlagSource) -> KnnCache:
    return KnnCache(source.catalog.storage, f"{source.dataset}/_knn")


EMBEDDINGS = FlagInput("embeddings", _spaces)
KNN_CACHE = FlagInput("knn_cache", _knn_cache)
_EMBED_READS = tuple(f"embed-{s}" for s in SPACES)


def _rows(frame: FlagFrame, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The frame row of each of ``ids`` (-1: not a row)."""
    return frame_rows(frame.table.column("image_id"), ids)


def _knn_alongside(frame: FlagFrame, sv: SpaceVectors, p: EmbeddingFlagParams) -> int | None:
    """``k`` when the outlier rule will need the two-cluster k-NN of this space (above
    EXACT_KNN_MAX, not cached): then the duplicate search computes it in the same pass."""
    cache: KnnCache | None = frame.input("knn_cache")
    if sv.n <= EXACT_KNN_MAX or cache is None:
        return None
    k, size = p.embedding_outlier_k, p.semantic_duplicate_cluster_size
    return None if cache.has(sv, k, size) else k


def _group_columns(frame: FlagFrame, groups: pa.Table) -> dict[str, Any]:
    """The group columns on the frame's rows (null where an image is in no group)."""
    at = _rows(frame, groups.column("image_id"))
    take = np.full(frame.n, -1, np.int64)
    take[at[at >= 0]] = np.flatnonzero(at >= 0)
    index = pa.array(take, pa.int64(), mask=take < 0)
    return {name: groups.column(name).take(index) for name in SEMANTIC_DUP_SCHEMA.names[1:]}


@flag_rule(
    "semantic_duplicates",
    [*list(SEMANTIC_DUP_SCHEMA)[1:], pa.field("is_semantic_duplicate", pa.bool_())],
    order=80,
    params=EmbeddingFlagParams,
    features=QUALITY_COLUMNS,
    inputs=(EMBEDDINGS,),
    optional_reads=_EMBED_READS,
)
def semantic_duplicate_columns(frame: FlagFrame, p: EmbeddingFlagParams) -> Columns:
    """Groups of images whose embeddings are nearly the same, in one space."""
    spaces: Mapping[str, SpaceVectors] = frame.input("embeddings") or {}
    space: str = p.semantic_duplicate_space
    if space not in spaces and spaces:
        space = next(iter(spaces))
    if space not in spaces:
        return {
            **{f.name: pa.nulls(frame.n, f.type) for f in list(SEMANTIC_DUP_SCHEMA)[1:]},
            "is_semantic_duplicate": np.zeros(frame.n, bool),
        }
    sv = spaces[space]
    rows = _rows(frame, sv.ids)
    quality = {name: np.where(rows >= 0, frame.num(name)[rows], np.nan) for name in QUALITY_COLUMNS}
    groups = semantic_duplicates(
        sv,
        p.semantic_duplicate_threshold,
        p.semantic_duplicate_cluster_size,
        quality,
        knn_k=_knn_alongside(frame, sv, p),
    )
    cols = _group_columns(frame, groups)
    canonical = cols["is_semantic_dup_canonical"]
    is_sem_dup = np.asarray(
        pc.fill_null(pc.invert(canonical), False).to_numpy(zero_copy_only=False), bool
    )
    return {**cols, "is_semantic_duplicate": is_sem_dup}


@flag_rule(
    "embedding_outliers",
    [
        *(pa.field(f"knn_distance_{s}", pa.float32()) for s in SPACES),
        pa.field("embedding_outlier_score", pa.float32()),
        pa.field("is_embedding_outlier", pa.bool_()),
    ],
    order=81,
    params=EmbeddingFlagParams,
    inputs=(EMBEDDINGS, KNN_CACHE),
    optional_reads=_EMBED_READS,
)
def embedding_outlier_columns(frame: FlagFrame, p: EmbeddingFlagParams) -> Columns:
    """Images far from their nearest neighbours in some embedding space."""
    spaces: Mapping[str, SpaceVectors] = frame.input("embeddings") or {}
    cache: KnnCache | None = frame.input("knn_cache")
    out: dict[str, Any] = {}
    z = np.zeros(frame.n)
    has_any = np.zeros(frame.n, bool)
    k, size = p.embedding_outlier_k, p.semantic_duplicate_cluster_size
    for name in SPACES:
        d = np.full(frame.n, np.nan)
        if name in spaces:
            sv = spaces[name]
            rows = _rows(frame, sv.ids)
            dist = cache.distances(sv, k, size) if cache is not None else space_knn(sv, k, size)
            d[rows[rows >= 0]] = dist[rows >= 0]
            z = np.maximum(z, high_side_robust_z(d))
            has_any[rows[rows >= 0]] = True
        out[f"knn_distance_{name}"] = d
    enough = has_any.sum() >= p.outlier_min_images
    score = np.where(has_any & enough, z, np.nan)
    with np.errstate(invalid="ignore"):
        flagged = np.nan_to_num(score > p.embedding_outlier_threshold, nan=0).astype(bool)
    return {**out, "embedding_outlier_score": score, "is_embedding_outlier": flagged}
