"""``caption-embed``: the CLIP text embedding of every caption (for ``clip_score`` and PASS 7).

Units: the captions without error (view ``captions``), keyed by ``caption_id``. The model is the
CLIP model of the ``embed-clip`` pass (``passes.embed-clip.model`` / ``revision`` of the
workspace config; ``lite`` when unset), so caption and image vectors share one space;
``passes.caption-embed.model`` overrides it. Texts go through
:meth:`exokiratory.models.vision.ClipEmbedder.embed_texts` (CLIP's 77-token window: longer,
dense captions are truncated). Output ``captions/embeddings/<model>/``, view
``caption_embeddings``: caption_id, unit_id, unit_kind, image_id, image_idx, the L2-normalised
``embedding`` (float16 by default), model_id, revision, error.

It also defines the view ``captions`` (every caption pass's rows together, see
:data:`CAPTIONS_VIEW_SQL`), whose ``clip_score`` is the cosine between a caption's text vector
and its unit's CLIP image vector (``embeddings_clip`` for an image, ``segment_embeddings_clip``
for a segment) from the same model, null when either is missing. It is computed when read, so
it follows re-embedded images without recaptioning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.step import BatchContext, Pass, PassParams, PassSetupError, Resource, Step
from exokiratory.models.registry import ModelSpec, model_slug
from exokiratory.passes.embed.step import EmbeddingModel, ModelParams

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

CAPTION_VIEWS = ("captions_factual", "captions_dense")
"""The caption passes' views (``captions`` is their union)."""

_COLUMNS = (
    "unit_kind, unit_id, image_id, image_idx, segment_id, mask_index, caption_id, task, "
    "prompt_id, prompt_version, model_id, model_revision, generation_params, "
    "is_random_weights, text, n_tokens, error"
)

CAPTIONS_VIEW_SQL = """
SELECT c.* EXCLUDE (error),
       (CASE WHEN e.embedding IS NULL THEN NULL
             WHEN c.unit_kind = 'image' AND i.embedding IS NOT NULL
             THEN list_cosine_similarity(e.embedding::FLOAT[], i.embedding::FLOAT[])
             WHEN c.unit_kind = 'segment' AND s.embedding IS NOT NULL
             THEN list_cosine_similarity(e.embedding::FLOAT[], s.embedding::FLOAT[]) END
       )::FLOAT AS clip_score,
       c.error
FROM ({union}) c
LEFT JOIN caption_embeddings e ON e.caption_id = c.caption_id AND e.error IS NULL
LEFT JOIN {images} i ON c.unit_kind = 'image' AND i.image_id = c.image_id
     AND i.error IS NULL AND i.model_id = e.model_id
LEFT JOIN {segments} s ON c.unit_kind = 'segment' AND s.segment_id = c.segment_id
     AND s.error IS NULL AND s.model_id = e.model_id
ORDER BY c.image_idx, c.unit_id, c.caption_id
"""
"""View ``captions``: every caption pass's rows (``caption_pass``: factual or dense), with
``clip_score``."""

_NO_VECTORS = (
    "(SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS segment_id, NULL::FLOAT[] AS embedding, "
    "NULL::VARCHAR AS model_id, NULL::VARCHAR AS error WHERE false)"
)


class CaptionEmbedParams(PassParams):
    model: str | None = Field(None, description="CLIP model; None: that of embed-clip")
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_batch_size: int = Field(64, ge=1, description="texts per forward; halves on OOM")
    storage_dtype: Literal["float16", "float32"] = "float16"


class CaptionEmbedPass(Pass[CaptionEmbedParams]):
    """CLIP text embeddings of the captions (see the module docstring)."""

    dataset = "captions/embeddings"
    version = "v1"
    stage = 5
    resources = Resource.GPU
    reads = ("caption-factual", "caption-dense")
    key = ("caption_id",)
    Params = CaptionEmbedParams
    units_sql = """
        SELECT caption_id, unit_id, unit_kind, image_id, image_idx, text FROM captions
        WHERE error IS NULL AND text IS NOT NULL ORDER BY image_idx, unit_id, caption_id"""

    def __init__(self, params: dict[str, Any] | None = None):
        super().__init__(params)
        p = self.params
        #: the CLIP model: ``model`` when given, else (after :meth:`bind`) that of embed-clip
        self.clip = ModelParams(model=p.model or "lite", revision=p.revision)

    def bind(self, steps: Sequence[Step[Any]]) -> None:
        """Use the configured ``embed-clip`` pass's model (unless ``model`` names one), so
        caption and image vectors share one space (the workspace calls this, as it does a
        derivation's ``bind``)."""
        p = self.params
        if p.model is not None:
            self.clip = ModelParams(model=p.model, revision=p.revision)
            return
        for s in steps:
            if s.name == "embed-clip" and isinstance(s.params, ModelParams):
                self.clip = ModelParams(model=s.params.model, revision=s.params.revision)

    @property
    def embedding_model(self) -> EmbeddingModel:
        p = self.params
        params = self.clip.model_copy(
            update={
                "device": p.device,
                "forward_batch_size": p.forward_batch_size,
                "storage_dtype": p.storage_dtype,
            }
        )
        return EmbeddingModel("clip", params, self.name)

    @property
    def spec(self) -> ModelSpec:
        return self.embedding_model.spec

    @property
    def view_name(self) -> str:
        return "caption_embeddings"

    def in_all(self, configured: bool) -> bool:
        """A model pass: in ``run all`` once the config names it."""
        return configured

    def missing_requirement(self) -> str | None:
        return self.embedding_model.missing_requirement()

    @property
    def output_rel(self) -> str:
        return f"{self.dataset}/{model_slug(self.spec.model_id)}"

    @property
    def full_version(self) -> str:
        return f"{self.version}:{self.spec.model_id}@{self.spec.revision or 'main'}"

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("caption_id", pa.string(), nullable=False),
                pa.field("unit_id", pa.string(), nullable=False),
                pa.field("unit_kind", pa.string()),
                pa.field("image_id", pa.string(), nullable=False),
                pa.field("image_idx", pa.int64(), nullable=False),
                pa.field("embedding", self.embedding_model.embedding_type(self.workspace_url)),
                pa.field("model_id", pa.string()),
                pa.field("revision", pa.string()),
                pa.field("error", pa.string()),
            ]
        )

    def views(self) -> list[str]:
        return [self.view_name, "captions"]

    def define_views(self, catalog: Catalog) -> None:
        super().define_views(catalog)
        present = [v for v in CAPTION_VIEWS if v in catalog.views]
        if not present:
            return
        union = " UNION ALL ".join(
            f"SELECT {_COLUMNS}, '{v.removeprefix('captions_')}' AS caption_pass FROM {v}"
            for v in present
        )
        # the vectors of the captioned units only: the embedding views rank every row per key
        # (10^7 image vectors at 10^7 images) when joined whole
        units = f"SELECT {{}} FROM ({union}) WHERE {{}} IS NOT NULL"
        images, segments = (
            f"({catalog.keyed_subset_sql(view, col, units.format(col, col))})"
            if view in catalog.views
            else _NO_VECTORS
            for view, col in (
                ("embeddings_clip", "image_id"),
                ("segment_embeddings_clip", "segment_id"),
            )
        )
        catalog.define_view(
            "captions", CAPTIONS_VIEW_SQL.format(union=union, images=images, segments=segments)
        )

    def units(self, catalog: Catalog) -> pa.Table:
        if "captions" not in catalog.views:
            return pa.table({k: pa.array([], pa.string()) for k in ("caption_id", "text")})
        return catalog.query(self.units_sql)

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        model = self.embedding_model
        check_available(self.spec, ctx.workspace_url)
        embedder = model.load(ctx.workspace_url)
        embed_texts = getattr(embedder, "embed_texts", None)
        if embed_texts is None:
            raise PassSetupError(f"{self.spec.model_id!r} has no text tower (not a CLIP model)")
        texts = units.column("text").to_pylist()
        vectors = np.asarray(embed_texts(texts), np.float32)
        valid = np.ones(len(texts), bool)
        spec = self.spec
        n = units.num_rows
        table = pa.table(
            {
                **{c: units.column(c) for c in ("caption_id", "unit_id", "unit_kind")},
                "image_id": units.column("image_id"),
                "image_idx": units.column("image_idx"),
                "embedding": model.embedding_array(vectors, valid),
                "model_id": pa.array([spec.model_id] * n, pa.string()),
                "revision": pa.array([spec.revision] * n, pa.string()),
                "error": pa.nulls(n, pa.string()),
            }
        )
        return table.cast(self.output_schema())


def check_available(spec: ModelSpec, workspace_url: str) -> None:
    """Fail at once (:class:`PassSetupError`) for a hub model that is neither cached nor
    downloadable (the hub unreachable), instead of minutes of download retries."""
    if spec.is_tiny or spec.is_local:
        return
    from exokiratory.models.captioner import hub_reachable
    from exokiratory.passes.embed.step import cache_dir_for

    if hub_reachable(spec.model_id):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            spec.model_id,
            "config.json",
            cache_dir=cache_dir_for(workspace_url),
            revision=spec.revision,
        )
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise PassSetupError(
            f"cannot load model {spec.model_id!r}: not in the cache and the hub is unreachable "
            "(set passes.caption-embed.model to a local folder, or 'tiny' for plumbing)"
        )
