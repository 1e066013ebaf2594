"""``motifs``: clusters of segment embeddings per space, scored infrastructure / foreground / rare.

A derivation (never pixels) over the ``segments`` view and ``segment_embeddings_<space>``,
written to ``clusters/motifs/<version>-<inputs>/`` (see :mod:`exokiratory.engine.derive`):

* view ``motifs``: one row per segment and space (:data:`exokiratory.passes.motifs.scores.SEGMENTS_SCHEMA`);
* view ``motifs_clusters``: one row per cluster and space
  (:data:`exokiratory.passes.motifs.scores.CLUSTERS_SCHEMA`, in ``clusters/``).

Every definition (k, scores, thresholds) is in :mod:`exokiratory.passes.motifs.scores`; parameters come from
``passes.motifs`` (:class:`exokiratory.passes.motifs.scores.MotifsParams`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from exokiratory.engine.registry import register
from exokiratory.engine.step import Derivation, missing_modules
from exokiratory.passes.motifs.scores import (
    CLUSTERS_SCHEMA,
    SEGMENTS_SCHEMA,
    MotifsParams,
    SegmentSet,
    find_motifs,
)
from exokiratory.search.indices import embedding_matrix, single_model

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

MOTIF_INPUT_SQL = """
SELECT e.segment_id, e.image_id, e.image_idx, e.mask_index, e.embedding, e.model_id,
       s.area_fraction, s.touches_border
FROM "{view}" e JOIN segments s USING (segment_id)
WHERE e.error IS NULL AND e.embedding IS NOT NULL
ORDER BY e.image_idx, e.mask_index
"""


def load_segment_set(catalog: Catalog, space: str) -> SegmentSet | None:
    """The embedded segments of ``space`` with their geometry, or None when there are none."""
    view = f"segment_embeddings_{space}"
    if view not in catalog.views or "segments" not in catalog.views:
        return None
    t = catalog.query(MOTIF_INPUT_SQL.format(view=view))
    if t.num_rows == 0:
        return None
    single_model(t, view)
    return SegmentSet(
        vectors=embedding_matrix(t.column("embedding")),
        segment_ids=t.column("segment_id").to_pylist(),
        image_ids=t.column("image_id").to_pylist(),
        image_idx=t.column("image_idx").to_numpy(),
        mask_index=t.column("mask_index").to_numpy(),
        area_fraction=t.column("area_fraction").to_numpy(zero_copy_only=False).astype(np.float32),
        touches_border=t.column("touches_border").to_numpy(zero_copy_only=False).astype(bool),
    )


@register
class MotifsDerivation(Derivation[MotifsParams]):
    name = "motifs"
    dataset = "clusters/motifs"
    version = "v1"
    stage = 4
    reads = ("segment-embed-clip", "segment-embed-dino")
    optional_reads = ("segment",)  # masks geometry (always there when its embeddings are)
    Params = MotifsParams
    description = "segment motifs: clusters of segment embeddings, infrastructure vs foreground"

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` once a segment embedding pass is configured."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(("faiss",), "ml")

    def output_schema(self) -> pa.Schema:
        return SEGMENTS_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {"clusters": CLUSTERS_SCHEMA}

    def derive(self, catalog: Catalog) -> pa.Table:
        return self.derive_outputs(catalog)[""]

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        params = self.params
        segments, clusters = [SEGMENTS_SCHEMA.empty_table()], [CLUSTERS_SCHEMA.empty_table()]
        for space in params.spaces:
            seg = load_segment_set(catalog, space)
            if seg is None:
                log.info("motifs: no %s segment embeddings yet; nothing to cluster", space)
                continue
            per_segment, per_cluster = find_motifs(seg, space, params)
            segments.append(per_segment)
            clusters.append(per_cluster)
        return {"": pa.concat_tables(segments), "clusters": pa.concat_tables(clusters)}
