"""``flags`` (PASS 2): routing flags derived from PASS 0/1 outputs; see :mod:`.rules`."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.core.layout import FLAGS
from exokiratory.engine.registry import register
from exokiratory.engine.step import Derivation
from exokiratory.passes.flags.embedding import KnnCache, load_spaces
from exokiratory.passes.flags.rules import (
    FLAGS_INPUT_SQL,
    FLAGS_SCHEMA,
    FlagsParams,
    NearDupCache,
    derive_flags,
)
from exokiratory.passes.flags.semantic import align_inputs, semantic_inputs_sql

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

#: the images worth GPU time: readable, not junk, canonical (model passes read this view)
IMAGES_ROUTED_SQL = (
    "SELECT i.* FROM images i JOIN flags f USING (image_id) WHERE f.is_worth_gpu "
    "ORDER BY i.image_idx"
)


@register
class FlagsDerivation(Derivation[FlagsParams]):
    name = "flags"
    dataset = FLAGS
    version = "v1"
    stage = 2
    Params = FlagsParams
    description = "PASS 2 routing flags (junk, duplicates, outliers, text-heavy...)"
    reads = ("sense", "probe", "cues")
    #: the embeddings are computed for the images the flags route, then refine the flags
    #: (semantic duplicates, embedding outliers, zero-shot modality): re-derived after them
    optional_reads = ("embed-clip", "embed-dino", "zeroshot")

    def output_schema(self) -> pa.Schema:
        return FLAGS_SCHEMA

    def extra_views(self) -> dict[str, str]:
        return {"images_routed": IMAGES_ROUTED_SQL}

    def derive(self, catalog: Catalog) -> pa.Table:
        if "features" not in catalog.views:
            raise RuntimeError("flags need PASS 1 features: run `exokiratory run sense` first")
        has_probe = "probe" in catalog.views
        sql = FLAGS_INPUT_SQL.format(
            probe_cols=", pr.error AS probe_error" if has_probe else "",
            probe_join="LEFT JOIN probe pr USING (image_id)" if has_probe else "",
        )
        table = catalog.query(sql)
        hash_inputs = [i for i in self.inputs if i.startswith(("manifests/", "features/global"))]
        cache = NearDupCache(catalog.storage, self.dataset, hash_inputs, self.params)
        spaces = load_spaces(catalog) if importlib.util.find_spec("faiss") is not None else {}
        sem_sql = semantic_inputs_sql(catalog.views)
        semantic = align_inputs(table["image_id"], catalog.query(sem_sql)) if sem_sql else None
        return derive_flags(
            table,
            self.params,
            self.full_version,
            dup_cache=cache,
            spaces=spaces,
            semantic=semantic,
            knn_cache=KnnCache(catalog.storage, f"{self.dataset}/_knn"),
        )
