"""PASS 4: ``segment-embed-clip`` / ``segment-embed-dino`` (segment embeddings) and
``segment-stats`` (colour and texture of the masked pixels).

``segment-embed-<space>``: one row per segment in ``segments/embeddings/<space>/<model>/`` (view
``segment_embeddings_<space>``): ``segment_id``, ``image_id``, ``image_idx``, ``mask_index``,
the L2-normalised ``embedding`` (float16 fixed-size list by default), ``model_id``,
``revision``, ``error``. The model input is the segment's **masked crop**
(:mod:`exokiratory.passes.segment_embed.crops`): its box grown by ``margin`` (0.1 of the longer side) on
each side, every pixel outside the mask replaced by ``fill`` (default ``model_mean``: the
model's normalisation mean, which normalises to 0, so the surrounding image never leaks into
the embedding; ``black``, ``white`` and ``grey`` are the alternatives), padded to a centred
square with the same fill, then the model's own preprocessing (resize, centre crop, normalise).
Non-default ``margin`` / ``fill`` write a separate dataset (``<model>-crop<digest>``). Model
loading, device, dtype, caching and OOM backoff are those of the image embedding passes
(:class:`exokiratory.passes.embed.step.EmbeddingModel`); like them, they join ``run all`` only once
``passes.segment-embed-<space>`` names a model.

``segment-stats``: one row per segment in ``segments/stats/v1/`` (view ``segment_stats``): the
identifying columns, then ``lab_hist``, ``lab_mean_l/a/b``, ``lab_std_l``, ``chroma_mean``,
``lbp_hist`` (defined in :mod:`exokiratory.passes.segment_embed.stats`) and ``error``. CPU only, one image
decode shared by all of its segments.

Both read units from the ``segments`` view (:mod:`exokiratory.passes.segment_embed.base`): each image
is decoded once per batch for all of its segments.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from exokiratory.engine.registry import register, register_alias
from exokiratory.engine.step import BatchContext, PassParams, Resource
from exokiratory.models.registry import model_slug
from exokiratory.passes.embed.step import EmbeddingModelStep, ModelParams
from exokiratory.passes.segment_embed.base import SEGMENT_KEY_FIELDS, ImageSegments, SegmentPass
from exokiratory.passes.segment_embed.crops import RGB, masked_crop, mean_fill
from exokiratory.passes.segment_embed.stats import STATS_FIELDS, ImageStats

if TYPE_CHECKING:
    from exokiratory.models.vision import ImageEmbedder

FIXED_FILLS: dict[str, RGB] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
}


class SegmentEmbedParams(ModelParams):
    margin: float = Field(0.1, ge=0.0, le=2.0, description="context around the box, x its side")
    fill: Literal["model_mean", "black", "white", "grey"] = Field(
        "model_mean", description="colour outside the mask and of the square padding"
    )


class SegmentEmbedPass(EmbeddingModelStep, SegmentPass[SegmentEmbedParams]):
    """Base of the CLIP and DINOv2 segment embedding passes."""

    dataset = "segments/embeddings"
    version = "v1"
    stage = 4
    resources = Resource.GPU
    Params = SegmentEmbedParams

    @property
    def decode_threads(self) -> int:
        return self.params.decode_threads

    @property
    def view_name(self) -> str:
        return f"segment_embeddings_{self.role}"

    def _crop_digest(self) -> str:
        """'' for the default crop geometry, else ``-crop<digest>`` of margin and fill."""
        params = self.params
        crop = {"margin": params.margin, "fill": params.fill}
        if crop == {"margin": 0.1, "fill": "model_mean"}:
            return ""
        text = json.dumps(crop, sort_keys=True)
        return f"-crop{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @property
    def output_rel(self) -> str:
        return f"{self.dataset}/{self.spec.space}/{model_slug(self.spec.model_id)}{self._crop_digest()}"

    @property
    def full_version(self) -> str:
        return self.model_version(self.version, self._crop_digest())

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                *SEGMENT_KEY_FIELDS,
                self.embedding_field(),
                pa.field("model_id", pa.string()),
                pa.field("revision", pa.string()),
                pa.field("error", pa.string()),
            ]
        )

    def fill_colour(self, embedder: ImageEmbedder) -> RGB:
        params = self.params
        if params.fill == "model_mean":
            return mean_fill(embedder.preprocessing.mean)
        return FIXED_FILLS[params.fill]

    def setup(self, ctx: BatchContext) -> ImageEmbedder:
        return self.embedding_model.load(ctx.workspace_url)

    def prepare(self, image: ImageSegments, state: Any) -> list[Any]:
        embedder: ImageEmbedder = state
        params = self.params
        fill = self.fill_colour(embedder)
        rgb = image.rgb
        if rgb is None:  # pragma: no cover - load_image sets it or an error
            raise RuntimeError("image not decoded")

        def one(row: dict[str, Any], mask: np.ndarray) -> np.ndarray:
            crop = masked_crop(rgb, mask, row["bbox"], params.margin, fill)
            return embedder.preprocess(Image.fromarray(crop, mode="RGB"))

        return self.per_segment(image, one)

    def finish(self, rows: list[dict[str, Any]], prepared: list[Any], state: Any) -> pa.Table:
        embedder: ImageEmbedder = state
        good = [i for i, p in enumerate(prepared) if isinstance(p, np.ndarray)]
        vectors = np.zeros((len(rows), embedder.dim), np.float32)
        if good:
            vectors[good] = embedder.embed_pixels(np.stack([prepared[i] for i in good]))
        valid = np.zeros(len(rows), bool)
        valid[good] = True
        spec = self.spec
        table = pa.table(
            {
                **self.key_columns(rows),
                "embedding": self.embedding_model.embedding_array(vectors, valid),
                "model_id": [spec.model_id if v else None for v in valid],
                "revision": [spec.revision if v else None for v in valid],
                "error": [None if v else str(p) for v, p in zip(valid, prepared, strict=True)],
            }
        )
        return table.cast(self.output_schema())


@register
class ClipSegmentEmbedPass(SegmentEmbedPass):
    name = "segment-embed-clip"
    role = "clip"
    description = "PASS 4 CLIP embeddings of masked segment crops"


@register
class DinoSegmentEmbedPass(SegmentEmbedPass):
    name = "segment-embed-dino"
    role = "dino"
    description = "PASS 4 DINOv2 embeddings of masked segment crops"


@register
class SegmentStatsPass(SegmentPass[PassParams]):
    """Colour (Lab) and texture (uniform LBP) statistics of every segment's masked pixels."""

    name = "segment-stats"
    dataset = "segments/stats"
    version = "v1"
    stage = 4
    Params = PassParams
    description = "PASS 4 Lab histogram and LBP texture of each segment"

    @property
    def decode_threads(self) -> int:
        """One: the CPU executor already runs one worker process per core."""
        return 1

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` once segments are (the ``segment`` pass is configured)."""
        return configured

    @property
    def view_name(self) -> str:
        return "segment_stats"

    def output_schema(self) -> pa.Schema:
        return pa.schema([*SEGMENT_KEY_FIELDS, *STATS_FIELDS, pa.field("error", pa.string())])

    def prepare(self, image: ImageSegments, state: Any) -> list[Any]:
        if image.rgb is None:  # pragma: no cover - load_image sets it or an error
            raise RuntimeError("image not decoded")
        stats = ImageStats(image.rgb)
        return self.per_segment(image, lambda row, mask: stats.segment(mask))

    def finish(self, rows: list[dict[str, Any]], prepared: list[Any], state: Any) -> pa.Table:
        names = [f.name for f in STATS_FIELDS]
        cols: dict[str, list[Any]] = {n: [] for n in names}
        errors: list[str | None] = []
        for p in prepared:
            ok = isinstance(p, dict)
            for n in names:
                cols[n].append(p[n] if ok else None)
            errors.append(None if ok else str(p))
        table = pa.table({**self.key_columns(rows), **cols, "error": errors})
        return table.cast(self.output_schema())


register_alias("segment-embed", ("segment-embed-clip", "segment-embed-dino", "segment-stats"))
