"""PASS 5, selective captioning: language only where the structure says it is worth it.

* ``caption-select`` (derivation, view ``caption_selection``): which images and segments to
  caption and in which order, from the clusters, motifs and segment statistics, with a budget
  (:mod:`exokiratory.passes.captions.select` defines every rule).
* ``caption-factual`` (model role ``caption``: BLIP-2 ``full``, Florence-2 ``lite``) and
  ``caption-dense`` (role ``vlm``: LLaVA-1.5 ``full``, SmolVLM ``lite``): the selected units not
  yet captioned, in priority order (:mod:`exokiratory.passes.captions.caption`); views
  ``captions_factual``, ``captions_dense``.
* ``caption-embed``: CLIP text embeddings of the captions (view ``caption_embeddings``) and the
  view ``captions`` (all caption rows, with ``clip_score``;
  :mod:`exokiratory.passes.captions.text_embed`).

``exokiratory run caption`` runs the selection, the factual captioner and the caption
embeddings; ``caption-dense`` runs by name or when configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.engine.registry import register, register_alias
from exokiratory.engine.step import Derivation
from exokiratory.passes.captions.caption import CaptionParams, CaptionPass, UnitKind
from exokiratory.passes.captions.select import (
    SELECTION_SCHEMA,
    CaptionSelectParams,
    select_units,
)
from exokiratory.passes.captions.text_embed import CaptionEmbedPass

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)


@register
class CaptionSelectDerivation(Derivation[CaptionSelectParams]):
    name = "caption-select"
    dataset = "captions/selection"
    version = "v1"
    stage = 5
    reads = ("clusters-clip", "clusters-dino", "motifs", "segment-stats")
    Params = CaptionSelectParams
    description = "PASS 5 caption selection: exemplars, spread, motif outliers, entropy, budget"

    @property
    def view_name(self) -> str:
        return "caption_selection"

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` once named or read by a configured caption pass."""
        return configured

    def output_schema(self) -> pa.Schema:
        return SELECTION_SCHEMA

    def derive(self, catalog: Catalog) -> pa.Table:
        table = select_units(catalog, self.params, self.version)
        log.info("caption-select: %d units selected", table.num_rows)
        return table


class FactualParams(CaptionParams):
    """``passes.caption-factual``: short factual captions of images and segments."""


class DenseParams(CaptionParams):
    """``passes.caption-dense``: detailed descriptions of the selected images."""

    prompt: str = "dense_v1"
    unit_kinds: tuple[UnitKind, ...] = ("image",)
    max_new_tokens: int = 256
    segment_max_new_tokens: int = 64
    generate_batch_size: int = 4


@register
class FactualCaptionPass(CaptionPass):
    name = "caption-factual"
    kind = "factual"
    role = "caption"
    Params = FactualParams
    description = "PASS 5 factual captions of the selected units (BLIP-2 full, Florence-2 lite)"


@register
class DenseCaptionPass(CaptionPass):
    name = "caption-dense"
    kind = "dense"
    role = "vlm"
    Params = DenseParams
    description = "PASS 5 dense captions of the selected images (LLaVA-1.5 full, SmolVLM lite)"


@register
class CaptionEmbedStep(CaptionEmbedPass):
    name = "caption-embed"
    description = "PASS 5 CLIP text embeddings of the captions (clip_score, PASS 7)"


register_alias("caption", ("caption-select", "caption-factual", "caption-embed"))
