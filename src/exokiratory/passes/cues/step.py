"""``cues``: text-detector and face-detector cues for every image, in features/cues/<version>/.

One row per readable image (view ``cues``), from one decode (EXIF orientation applied, alpha
on white, bomb guard: :func:`exokiratory.core.decode.load_working_image`) at a working size
whose longer side is ``working_size`` px (960; smaller images are not upscaled). Both detectors
ship inside their wheels (the ``cues`` extra); nothing is downloaded.

Columns (definitions in :mod:`exokiratory.passes.cues.text` and :mod:`exokiratory.passes.cues.faces`):

* ``n_text_boxes`` (int32), ``text_area_fraction``, ``text_box_score_mean``,
  ``text_box_height_median`` (float32): rapidocr's DB text detector (detection only).
* ``n_faces`` (int32), ``face_area_fraction``, ``max_face_fraction`` (float32): dlib's HOG
  frontal-face detector (``face_model``; OpenCV's Haar cascade on request).
* ``text_detector``, ``face_detector``: what produced them (package version and model file,
  e.g. ``rapidocr-3.10.0/PP-OCRv6_det_small``, ``dlib-20.0.1/frontal_face_hog``).

Version ``v2``: the default face detector became dlib's HOG detector (``v1`` rows came from the
Haar cascade, which fires on abstract patterns; see :mod:`exokiratory.passes.cues.faces`).
* ``error``: why the image could not be processed (then every other column is null).

The semantic flags (:mod:`exokiratory.passes.flags.semantic`) read this view when it exists.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from exokiratory.core.decode import load_working_image
from exokiratory.engine.registry import register
from exokiratory.engine.step import (
    BatchContext,
    ImagePass,
    PassParams,
    PassSetupError,
    missing_modules,
)

CUES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("n_text_boxes", pa.int32()),
        pa.field("text_area_fraction", pa.float32()),
        pa.field("text_box_score_mean", pa.float32()),
        pa.field("text_box_height_median", pa.float32()),
        pa.field("n_faces", pa.int32()),
        pa.field("face_area_fraction", pa.float32()),
        pa.field("max_face_fraction", pa.float32()),
        pa.field("text_detector", pa.string()),
        pa.field("face_detector", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class CuesParams(PassParams):
    working_size: int = Field(960, ge=64, le=4096, description="longer side of the decode, px")
    text_threshold: float = Field(0.3, gt=0, lt=1, description="DB probability-map binarisation")
    text_box_threshold: float = Field(0.5, gt=0, lt=1, description="minimum mean box probability")
    text_unclip_ratio: float = Field(1.6, gt=0, le=5, description="DB box expansion")
    text_max_box_height: float = Field(
        0.25, gt=0, le=1, description="taller boxes (/ longer side) are not text lines"
    )
    face_model: Literal["dlib-hog", "haar-alt2"] = Field(
        "dlib-hog", description="face detector: dlib's HOG (default) or OpenCV's Haar cascade"
    )
    face_max_side: int = Field(640, ge=64, le=4096, description="longer side for the detector, px")
    face_upsample: int = Field(1, ge=0, le=3, description="dlib-hog: pyramid upsamplings")
    face_min_score: float = Field(0.2, ge=-1, le=3, description="dlib-hog: minimum SVM score")
    face_scale_factor: float = Field(1.1, gt=1, le=2, description="haar-alt2: pyramid step")
    face_min_neighbors: int = Field(5, ge=1, le=50, description="haar-alt2: detections to confirm")
    face_min_size_fraction: float = Field(
        0.03, gt=0, lt=1, description="smallest face side / longer image side"
    )
    threads: int = Field(1, ge=1, le=64, description="detector threads per worker process")


@register
class CuesPass(ImagePass[CuesParams]):
    name = "cues"
    dataset = "features/cues"
    version = "v2"
    stage = 2
    Params = CuesParams
    description = "text boxes (rapidocr DB detector) and faces (dlib HOG detector) per image"

    def output_schema(self) -> pa.Schema:
        return CUES_SCHEMA

    def missing_requirement(self) -> str | None:
        from exokiratory.passes.cues import CUES_REQUIREMENTS

        return missing_modules(CUES_REQUIREMENTS, "cues")

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` whenever its detectors are installed (CPU only, nothing to download)."""
        return self.missing_requirement() is None

    def _detectors(self) -> tuple[Any, Any, str, str]:
        from exokiratory.passes.cues import faces, text

        p = self.params
        try:
            tdet = text.get_text_detector(
                max_side=p.working_size,
                threshold=p.text_threshold,
                box_threshold=p.text_box_threshold,
                unclip_ratio=p.text_unclip_ratio,
                max_box_height=p.text_max_box_height,
                threads=p.threads,
            )
            settings = faces.FaceSettings(
                model=p.face_model,
                max_side=p.face_max_side,
                upsample=p.face_upsample,
                min_score=p.face_min_score,
                scale_factor=p.face_scale_factor,
                min_neighbors=p.face_min_neighbors,
                min_size_fraction=p.face_min_size_fraction,
                threads=p.threads,
            )
            fdet = faces.get_face_detector(settings)
            return tdet, fdet, text.detector_id(), faces.detector_id(p.face_model)
        except (ImportError, text.DetectorUnavailable) as exc:
            raise PassSetupError(f"cues: {exc}") from exc

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        self._loaded = self._detectors()  # once per batch (cached per process); fails whole
        return super().process_batch(units, ctx)

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        p = self.params
        tdet, fdet, text_id, face_id = self._loaded
        img = load_working_image(
            unit["data"], working_size=p.working_size, max_pixels=ctx.max_image_pixels
        )
        t = tdet.cues(img.rgb)
        f = fdet.cues(img.rgb)
        return {
            "n_text_boxes": t.n_text_boxes,
            "text_area_fraction": t.text_area_fraction,
            "text_box_score_mean": t.text_box_score_mean,
            "text_box_height_median": t.text_box_height_median,
            "n_faces": f.n_faces,
            "face_area_fraction": f.face_area_fraction,
            "max_face_fraction": f.max_face_fraction,
            "text_detector": text_id,
            "face_detector": face_id,
        }
