"""``flags`` (PASS 2): routing flags derived from PASS 0/1 outputs; see :mod:`exokiratory.passes.flags.rules`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.core.layout import FLAGS
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
from exokiratory.passes.zeroshot.step import ZEROSHOT_DATASET

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage


class FlagsDerivation(Derivation):
    name = "flags"
    dataset = FLAGS
    version = "v1"
    depends_on = ("sense",)
    Params = FlagsParams
    description = "PASS 2 routing flags (junk, duplicates, outliers, text-heavy...)"

    #: the unit passes whose outputs the flags read (their folders join the input fingerprint)
    reads = ("sense", "probe", "cues", "embed-clip", "embed-dino")

    def output_schema(self) -> pa.Schema:
        return FLAGS_SCHEMA

    def derive(self, catalog: Catalog) -> pa.Table:
        if "features" not in catalog.views:
            raise RuntimeError("flags need PASS 1 features: run `exokiratory run sense` first")
        has_probe = "probe" in catalog.views
        sql = FLAGS_INPUT_SQL.format(
            probe_cols=", pr.error AS probe_error" if has_probe else "",
            probe_join="LEFT JOIN probe pr USING (image_id)" if has_probe else "",
        )
        table = catalog.query(sql)
        params: FlagsParams = self.params  # type: ignore[assignment]
        hash_inputs = [i for i in self.inputs if i.startswith(("manifests/", "features/global"))]
        cache = NearDupCache(catalog.storage, self.dataset, hash_inputs, params)
        spaces = load_spaces(catalog) if _has_faiss() else {}
        sem_sql = semantic_inputs_sql(catalog.views)
        semantic = align_inputs(table["image_id"], catalog.query(sem_sql)) if sem_sql else None
        return derive_flags(
            table,
            params,
            self.full_version,
            dup_cache=cache,
            spaces=spaces,
            semantic=semantic,
            knn_cache=KnnCache(catalog.storage, f"{self.dataset}/_knn"),
        )

    def extra_fingerprint(self, storage: Storage) -> str:
        """The current zero-shot output (a derivation, not a pass: not in :attr:`inputs`)."""
        from exokiratory.engine.derive import current_folder

        return current_folder(storage, ZEROSHOT_DATASET) or ""


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None
