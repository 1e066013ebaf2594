"""``ocr`` (PASS 6): recognised text of the routed text images -> semantics/ocr/<engine>-<version>/.

Routing (:mod:`exokiratory.engine.routing`): by default the images for which
``passes.ocr.route`` holds over the ``flags`` view, :data:`DEFAULT_ROUTE`: readable and not
tiny, and text-heavy, *or* classed as a scan, *or* with a text-heavy score of at least 0.05.
Neither junk nor near duplicates are excluded: sparse documentation pages (a title page, a
table of contents) have the grey entropy of a near-blank image (5 of 30 pages of Debian's
manuals are ``is_junk``), and pages of different text share perceptual hashes. The text-heavy
flag alone misses such pages (a page of about 100 words scores 0.08-0.6; bench/RESULTS.md
"PASS 6: OCR"); the low cut catches them at the price of OCR on a few photos and graphics,
where an empty or short text is the answer. ``routed_only: false`` (``run ocr --all``) reads
every readable image.

One decode per image (EXIF orientation applied, alpha on white, decompression-bomb guard):
an image whose longer side exceeds ``max_side`` (2000 px, rapidocr's own limit) is downscaled to
it (box filter) before OCR and its boxes are mapped back to the original pixels; ``ocr_scale``
records the factor (1 = full size). Engines: :mod:`exokiratory.passes.ocr.engines`.

Columns (one row per image; text columns defined in :mod:`exokiratory.passes.ocr.text`):

* ``text``: the full text in reading order (empty string when nothing was read: an empty
  result is a row with empty text, not an error).
* ``lines``: list of structs ``{text, confidence, x0, y0, x1, y1}``, one per recognised line,
  boxes in original image pixels (after EXIF orientation).
* ``n_lines``, ``n_chars``, ``n_word_chars`` (int32), ``mean_confidence``,
  ``text_area_fraction`` (float32).
* ``width``, ``height`` (int32): the oriented image; ``ocr_scale`` (float32): OCR input / image.
* ``engine`` (``rapidocr`` | ``tesseract``), ``engine_id`` (engine and model versions).
* ``error``: why the image could not be read (then the other columns are null).

View ``ocr``. The flag rule of :mod:`exokiratory.passes.ocr.flag_rules` adds
``text_confirmed_score``, ``is_text_confirmed`` and ``is_text_refuted`` to the flags (OCR
confirms or refutes ``is_text_heavy``). Full-text search: :mod:`exokiratory.passes.ocr.search`
(``exokiratory search --ocr "words"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from exokiratory.core.decode import load_working_image
from exokiratory.engine.registry import register
from exokiratory.engine.routing import check_route, routed_units, row_version
from exokiratory.engine.step import (
    BatchContext,
    ImagePass,
    PassSetupError,
    RoutedParams,
    missing_modules,
)

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.passes.ocr.engines import OcrEngine, OcrLine

DEFAULT_ROUTE = (
    "NOT f.is_corrupt AND NOT f.is_tiny "
    "AND (f.is_text_heavy OR f.is_scan OR f.text_heavy_score >= 0.05)"
)

OCR_LINE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("x0", pa.float32()),
        pa.field("y0", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
    ]
)

OCR_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("lines", pa.list_(OCR_LINE)),
        pa.field("n_lines", pa.int32()),
        pa.field("n_chars", pa.int32()),
        pa.field("n_word_chars", pa.int32()),
        pa.field("mean_confidence", pa.float32()),
        pa.field("text_area_fraction", pa.float32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("ocr_scale", pa.float32()),
        pa.field("engine", pa.string()),
        pa.field("engine_id", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class OcrParams(RoutedParams):
    engine: Literal["rapidocr", "tesseract"] = "rapidocr"
    route: str = Field(DEFAULT_ROUTE, description="SQL condition over the flags view (alias f)")
    max_side: int = Field(2000, ge=64, le=20000, description="longer side above it: downscaled")
    text_score: float = Field(0.5, ge=0, le=1, description="rapidocr: minimum line score")
    use_cls: bool = Field(True, description="rapidocr: text-direction classifier (180 degrees)")
    languages: str = Field("eng", pattern=r"^[a-z_]+(\+[a-z_]+)*$", description="tesseract")
    psm: int = Field(3, ge=0, le=13, description="tesseract page segmentation mode")
    threads: int = Field(1, ge=1, le=64, description="engine threads per worker process")

    @field_validator("route")
    @classmethod
    def _route(cls, v: str) -> str:
        return check_route(v)


@register
class OcrPass(ImagePass[OcrParams]):
    name = "ocr"
    dataset = "semantics/ocr"
    version = "v1"
    stage = 6
    Params = OcrParams
    reads = ("flags",)
    description = "recognised text, lines and boxes of the routed text images (rapidocr)"

    def output_schema(self) -> pa.Schema:
        return OCR_SCHEMA

    @property
    def full_version(self) -> str:
        return f"{row_version(self.version, self.params)}:{self.params.engine}"

    @property
    def output_rel(self) -> str:
        v = row_version(self.version, self.params)
        return f"{self.dataset}/{self.params.engine}-{v}"

    def missing_requirement(self) -> str | None:
        from exokiratory.passes.ocr import RAPIDOCR_REQUIREMENTS, TESSERACT_REQUIREMENTS

        if self.params.engine == "tesseract":
            return missing_modules(TESSERACT_REQUIREMENTS, "ocr")
        return missing_modules(RAPIDOCR_REQUIREMENTS, "ocr")

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` whenever its engine is installed (its models ship in the wheel, the
        routing keeps it to the text images)."""
        return self.missing_requirement() is None

    def units(self, catalog: Catalog) -> pa.Table:
        p = self.params
        return routed_units(catalog, self.name, p.route, p.routed_only)

    def _engine(self) -> OcrEngine:
        from exokiratory.passes.ocr.engines import EngineUnavailable, get_engine

        p = self.params
        try:
            return get_engine(
                p.engine,
                threads=p.threads,
                text_score=p.text_score,
                use_cls=p.use_cls,
                languages=p.languages,
                psm=p.psm,
            )
        except (ImportError, EngineUnavailable) as exc:
            raise PassSetupError(f"ocr: {exc}") from exc

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        self._loaded = self._engine()  # once per process (cached); fails the batch as a whole
        return super().process_batch(units, ctx)

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        engine = self._loaded
        img = load_working_image(
            unit["data"], working_size=self.params.max_side, max_pixels=ctx.max_image_pixels
        )
        lines = engine.read(img.rgb)
        return ocr_columns(lines, img.rgb.shape[0], img.rgb.shape[1], img.width, img.height) | {
            "engine": engine.engine,
            "engine_id": engine.engine_id,
        }


def ocr_columns(lines: list[OcrLine], h: int, w: int, width: int, height: int) -> dict[str, Any]:
    """The text columns of one image read at ``h x w`` px, boxes mapped to ``width x height``."""
    from exokiratory.passes.ocr import text as t

    scale = w / width if width else 1.0
    inv = 1.0 / scale if scale > 0 else 1.0
    full = t.full_text(lines)
    return {
        "text": full,
        "lines": [
            {
                "text": ln.text,
                "confidence": ln.confidence,
                "x0": ln.box[0] * inv,
                "y0": ln.box[1] * inv,
                "x1": ln.box[2] * inv,
                "y1": ln.box[3] * inv,
            }
            for ln in lines
        ],
        "n_lines": len(lines),
        "n_chars": t.n_chars(full),
        "n_word_chars": t.word_chars(lines),
        "mean_confidence": t.mean_confidence(lines),
        "text_area_fraction": t.text_area_fraction(lines, h, w),
        "width": width,
        "height": height,
        "ocr_scale": scale,
    }
