"""Flag rules of the ``embed`` family: semantic near-duplicates and embedding outliers.

Both read the stored global embeddings (``embed-clip`` / ``embed-dino``), never pixels; the
algorithms (SemDeDup-style duplicate search, k-NN distances) are in
:mod:`exokiratory.passes.flags.embedding`, whose docstring defines every column. Rows without an
embedding (and every row when only a random-weight ``tiny`` model's embeddings exist) get
nulls and False flags. ``embedding_outlier_score`` is "higher = more of an outlier";
``semantic_similarity_to_canonical`` is a similarity, not a score.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.core.robust import high_side_robust_z
from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.passes.flags.embedding import (
    SEMANTIC_DUP_SCHEMA,
    SPACES,
    KnnCache,
    SpaceVectors,
    knn_distance,
    load_spaces,
    semantic_duplicates,
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


def _positions(frame: FlagFrame) -> dict[str, int]:
    return {image_id: i for i, image_id in enumerate(frame.table.column("image_id").to_pylist())}


def _rows(pos: Mapping[str, int], sv: SpaceVectors) -> np.ndarray:
    """The frame row of each vector (-1: not a row)."""
    return np.array([pos.get(i, -1) for i in sv.ids])


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
    cols: dict[str, Any] = {name: [None] * frame.n for name in SEMANTIC_DUP_SCHEMA.names[1:]}
    is_sem_dup = np.zeros(frame.n, bool)
    space: str = p.semantic_duplicate_space
    if space not in spaces and spaces:
        space = next(iter(spaces))
    if space in spaces:
        sv, pos = spaces[space], _positions(frame)
        rows = _rows(pos, sv)
        quality = {
            name: np.where(rows >= 0, frame.num(name)[rows], np.nan) for name in QUALITY_COLUMNS
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
    pos = _positions(frame) if spaces else {}
    z = np.zeros(frame.n)
    for name in SPACES:
        d = np.full(frame.n, np.nan)
        if name in spaces:
            sv = spaces[name]
            rows = _rows(pos, sv)
            dist = (
                cache.distances(sv, p.embedding_outlier_k)
                if cache is not None
                else knn_distance(sv.vectors, p.embedding_outlier_k)
            )
            d[rows[rows >= 0]] = dist[rows >= 0]
            z = np.maximum(z, high_side_robust_z(d))
        out[f"knn_distance_{name}"] = d
    has_any = np.zeros(frame.n, bool)
    for sv in spaces.values():
        has_any[[pos[i] for i in sv.ids if i in pos]] = True
    enough = has_any.sum() >= p.outlier_min_images
    score = np.where(has_any & enough, z, np.nan)
    with np.errstate(invalid="ignore"):
        flagged = np.nan_to_num(score > p.embedding_outlier_threshold, nan=0).astype(bool)
    return {**out, "embedding_outlier_score": score, "is_embedding_outlier": flagged}
