"""Text regions from the DB text detector that ships inside the ``rapidocr`` wheel.

The model is PaddleOCR's DB (Differentiable Binarization) text-detection network in ONNX form,
``rapidocr/models/*det*.onnx`` (``PP-OCRv6_det_small.onnx`` in rapidocr 3.10): the file is part
of the installed wheel, so nothing is downloaded. Only the detector runs (no recognition, no
angle classifier), through onnxruntime on the CPU, with rapidocr's own pre- and post-processing
(:class:`rapidocr.ch_ppocr_det.utils.DetPreProcess` and ``DBPostProcess``): the image, as BGR,
is resized so its longer side is at most ``max_side`` px (multiples of 32; never upscaled),
normalised with mean = std = 0.5; the network's text-probability map is binarised at
``threshold``, dilated 2x2, each connected region becomes its minimum-area rectangle, kept when
the mean probability inside it (its score) is at least ``box_threshold``, then expanded by DB's
unclip offset (``area * unclip_ratio / perimeter``) and mapped back to the input size.
Finally boxes whose height (the shorter side of the rotated rectangle) exceeds
``max_box_height`` (0.25) of the image's longer side are dropped: text lines are thin, and on
natural photos the network occasionally marks a whole textured region (the saucer in
scikit-image's ``coffee``) as one huge "line" (very large display lettering is lost too).

Outputs (:class:`TextCues`), on the image given (the cues pass gives the working image of
longer side 960 px):

* ``n_text_boxes``: number of kept text boxes (lines or words).
* ``text_area_fraction``: area of the union of the boxes / image area (0..1; boxes are
  rasterised onto a mask, so overlaps count once).
* ``text_box_score_mean``: mean box score (0..1), null without boxes.
* ``text_box_height_median``: median box height (the shorter side of the rotated box) as a
  fraction of the image's longer side, null without boxes (body text ~0.01-0.03, titles more).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exokiratory.models.cache import ModelCache

log = logging.getLogger(__name__)

#: Preferred detection models, best first; any other ``*det*.onnx`` in the wheel is a fallback.
PREFERRED_MODELS: tuple[str, ...] = ("PP-OCRv6_det_small.onnx", "ch_PP-OCRv4_det_infer.onnx")

_CACHE: ModelCache[TextDetector] = ModelCache()


class DetectorUnavailable(RuntimeError):
    """The detector package (or the model file inside it) is not installed."""


@dataclass(frozen=True)
class TextCues:
    """Text-detector outputs for one image (see the module docstring)."""

    n_text_boxes: int
    text_area_fraction: float
    text_box_score_mean: float | None
    text_box_height_median: float | None


def shipped_model_path() -> Path:
    """The text-detection ONNX file inside the installed ``rapidocr`` wheel.

    Raises:
        DetectorUnavailable: rapidocr is not installed, or its wheel holds no detection model
            (a build that downloads models on first use; exokiratory never downloads them).
    """
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("rapidocr is not installed: pip install 'exokiratory[cues]'")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in PREFERRED_MODELS:
        if (models / name).is_file():
            return models / name
    found = sorted(models.glob("*det*.onnx")) if models.is_dir() else []
    if not found:
        raise DetectorUnavailable(
            f"the installed rapidocr has no text-detection model in {models} (this build "
            "downloads models at run time, which exokiratory does not do); install a rapidocr "
            "wheel that ships one: pip install 'exokiratory[cues]'"
        )
    return found[0]


def detector_id() -> str:
    """``rapidocr-<version>/<model file stem>``: what produced the text cues."""
    version = importlib.metadata.version("rapidocr")
    return f"rapidocr-{version}/{shipped_model_path().stem}"


class TextDetector:
    """One onnxruntime session over the shipped DB model plus rapidocr's pre/post-processing.

    Thread-safe (onnxruntime sessions may run concurrently); one per process through
    :func:`get_text_detector`.
    """

    def __init__(
        self,
        *,
        max_side: int = 960,
        threshold: float = 0.3,
        box_threshold: float = 0.5,
        unclip_ratio: float = 1.6,
        max_box_height: float = 0.25,
        threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        try:
            from rapidocr.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
        except ImportError as exc:  # pragma: no cover - depends on the installed rapidocr
            raise DetectorUnavailable(
                f"rapidocr's detector utilities cannot be imported ({exc}); "
                "pip install 'exokiratory[cues]'"
            ) from exc
        self.model_path = shipped_model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.model_path), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.max_box_height = max_box_height
        self.pre = DetPreProcess(max_side, "max", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        self.post = DBPostProcess(
            thresh=threshold,
            box_thresh=box_threshold,
            max_candidates=1000,
            unclip_ratio=unclip_ratio,
            use_dilation=True,
            score_mode="fast",
        )

    def boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Text boxes ``(N, 4, 2)`` int32 corner points in ``rgb`` pixels, and their scores."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        if min(h, w) < 8:  # the network downsamples 32x: nothing to find in a sliver
            return np.zeros((0, 4, 2), np.int32), []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        x: Any = self.pre(bgr)
        if x is None:
            return np.zeros((0, 4, 2), np.int32), []
        pred = self.session.run(None, {self.input_name: x})[0]
        boxes, scores = self.post(pred, (h, w))
        if len(boxes) == 0:
            return np.zeros((0, 4, 2), np.int32), []
        boxes = np.asarray(boxes, np.int32).reshape(-1, 4, 2)
        keep = [i for i, b in enumerate(boxes) if _height(b) <= self.max_box_height * max(h, w)]
        return boxes[keep], [float(scores[i]) for i in keep]

    def cues(self, rgb: np.ndarray) -> TextCues:
        """The text cues of one RGB image (see the module docstring)."""
        import cv2

        boxes, scores = self.boxes(rgb)
        h, w = rgb.shape[:2]
        if len(boxes) == 0:
            return TextCues(0, 0.0, None, None)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, list(boxes.astype(np.int32)), 1)
        heights = [_height(b) for b in boxes]
        return TextCues(
            n_text_boxes=len(boxes),
            text_area_fraction=float(mask.sum()) / float(h * w),
            text_box_score_mean=float(np.mean(scores)),
            text_box_height_median=float(np.median(heights)) / float(max(h, w)),
        )


def _height(box: np.ndarray) -> float:
    """The shorter side of a box's minimum-area rectangle, px."""
    import cv2

    return float(min(cv2.minAreaRect(box.astype(np.float32))[1]))


def get_text_detector(
    *,
    max_side: int = 960,
    threshold: float = 0.3,
    box_threshold: float = 0.5,
    unclip_ratio: float = 1.6,
    max_box_height: float = 0.25,
    threads: int = 1,
) -> TextDetector:
    """The process-wide detector for these settings (loaded once per process)."""
    key = (
        str(shipped_model_path()),
        max_side,
        threshold,
        box_threshold,
        unclip_ratio,
        max_box_height,
        threads,
    )
    return _CACHE.get_or_load(
        key,
        lambda: TextDetector(
            max_side=max_side,
            threshold=threshold,
            box_threshold=box_threshold,
            unclip_ratio=unclip_ratio,
            max_box_height=max_box_height,
            threads=threads,
        ),
    )
