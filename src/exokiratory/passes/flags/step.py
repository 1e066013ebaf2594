"""``flags`` (PASS 2): routing flags derived from stored outputs; the table is composed of the
flag rules every family registers (:mod:`.table`, :mod:`exokiratory.engine.flag_rules`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.core.layout import FLAGS
from exokiratory.engine.flag_rules import (
    FlagSource,
    feature_columns,
    flag_rules,
    load_inputs,
    rule_reads,
)
from exokiratory.engine.registry import register
from exokiratory.engine.step import Derivation, PassParams
from exokiratory.passes.flags.inputs import flags_input_sql
from exokiratory.passes.flags.table import FLAGS_SCHEMA, FlagsParams, derive_flags

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

#: the images worth GPU time: readable, not junk, canonical (model passes read this view)
IMAGES_ROUTED_SQL = (
    "SELECT i.* FROM images i JOIN flags f USING (image_id) WHERE f.is_worth_gpu "
    "ORDER BY i.image_idx"
)


@register
class FlagsDerivation(Derivation[PassParams]):
    name = "flags"
    dataset = FLAGS
    version = "v1"
    stage = 2
    Params = FlagsParams
    description = "PASS 2 routing flags (junk, duplicates, outliers, text-heavy...)"
    #: the steps the flag rules read (sense, probe, cues); the optional ones are computed for
    #: the images the flags route, then refine the flags (semantic duplicates, embedding
    #: outliers, zero-shot modality): re-derived after them
    reads = rule_reads(flag_rules())
    optional_reads = rule_reads(flag_rules(), optional=True)

    def output_schema(self) -> pa.Schema:
        return FLAGS_SCHEMA

    def extra_views(self) -> dict[str, str]:
        return {"images_routed": IMAGES_ROUTED_SQL}

    def _source(self, catalog: Catalog, ids: pa.ChunkedArray | None) -> FlagSource:
        return FlagSource(catalog, ids, self.dataset, self.inputs, self.params)

    def derive(self, catalog: Catalog) -> pa.Table:
        if not catalog.scalar("SELECT count(*) FROM images"):
            raise ValueError("nothing is scanned yet: run `exokiratory scan` first")
        if "features" not in catalog.views:
            raise RuntimeError("flags need PASS 1 features: run `exokiratory run sense` first")
        rules = flag_rules()
        # the early inputs (the near-duplicate groups) peak before the whole input table is read
        inputs = load_inputs(rules, self._source(catalog, None), early=True)
        table = catalog.query(flags_input_sql(feature_columns(rules)))  # one row per image
        inputs |= load_inputs(rules, self._source(catalog, table["image_id"]), early=False)
        return derive_flags(
            table, self.params, self.full_version, inputs, dictionary_provenance=True
        )
