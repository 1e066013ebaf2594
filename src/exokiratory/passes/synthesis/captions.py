"""``caption_clusters``: the images clustered by what their captions say.

Each image's caption vectors (the CLIP text embeddings of PASS 5, view ``caption_embeddings``;
image captions only unless ``segment_captions``) are averaged and L2-normalised, then
clustered by spherical k-means with ``k = choose_k(n, cluster_size)`` (about ``cluster_size``
images per cluster, at least 2), ``n_init`` seeded restarts (the best total similarity is
kept), clusters renumbered by size (largest first). ``similarity``: cosine to the centroid;
``n_captions``: captions averaged. Fewer than ``min_images`` captioned images: nothing (noted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.step import PassParams
from exokiratory.passes.synthesis.bags import by_size
from exokiratory.passes.synthesis.base import Notes, has_rows
from exokiratory.passes.synthesis.schemas import CAPTION_CLUSTERS_SCHEMA

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog


class CaptionClustersParams(PassParams):
    cluster_size: int = Field(30, ge=2, description="images per caption cluster, on average")
    min_images: int = Field(4, ge=2, description="fewer captioned images: no clusters")
    segment_captions: bool = Field(False, description="also average the image's segment captions")
    n_init: int = Field(3, ge=1, le=20, description="k-means restarts; the best fit is kept")
    niter: int = Field(25, ge=1, le=1000)
    seed: int = 0


EMBEDDINGS_SQL = """
SELECT image_id, image_idx, embedding, model_id FROM caption_embeddings
WHERE error IS NULL AND embedding IS NOT NULL {kinds}
ORDER BY image_idx, caption_id
"""


def derive_caption_clusters(cat: Catalog, params: CaptionClustersParams, notes: Notes) -> pa.Table:
    from exokiratory.search.clustering import choose_k, normalise_rows, spherical_kmeans
    from exokiratory.search.indices import embedding_matrix

    if not has_rows(cat, "caption_embeddings", "WHERE error IS NULL"):
        notes.skip(
            "caption_clusters",
            "no caption embeddings: run caption first "
            "(exokiratory run caption: caption-select, caption-factual, caption-embed)",
        )
        return CAPTION_CLUSTERS_SCHEMA.empty_table()
    kinds = "" if params.segment_captions else "AND unit_kind = 'image'"
    t = cat.query(EMBEDDINGS_SQL.format(kinds=kinds))
    idx = t.column("image_idx").to_numpy() if t.num_rows else np.zeros(0, np.int64)
    uniq, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
    if len(uniq) < params.min_images:
        notes.skip(
            "caption_clusters",
            f"{len(uniq)} captioned images (< min_images {params.min_images}): caption more "
            "(raise passes.caption-select.max_units, then run caption)",
            len(uniq),
        )
        return CAPTION_CLUSTERS_SCHEMA.empty_table()
    vectors = normalise_rows(embedding_matrix(t.column("embedding")))
    sums = np.zeros((len(uniq), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    x = normalise_rows(sums)
    k = choose_k(len(uniq), params.cluster_size)
    fits = [
        spherical_kmeans(x, k, seed=params.seed + i, niter=params.niter)
        for i in range(params.n_init)
    ]
    fit = max(fits, key=lambda f: float(f.similarity.sum(dtype=np.float64)))
    ids = t.column("image_id").to_pylist()
    models = t.column("model_id").to_pylist()
    notes.ok("caption_clusters", len(uniq), f"k = {k}")
    return pa.table(
        {
            "image_id": [ids[i] for i in first],
            "image_idx": uniq.astype(np.int64),
            "k": np.full(len(uniq), k, np.int32),
            "cluster_id": by_size(fit.assignments),
            "similarity": fit.similarity.astype(np.float32),
            "n_captions": np.bincount(inverse, minlength=len(uniq)).astype(np.int32),
            "model_id": [models[i] for i in first],
        },
        schema=CAPTION_CLUSTERS_SCHEMA,
    )
