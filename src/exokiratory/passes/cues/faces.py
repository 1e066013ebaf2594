"""Faces from OpenCV's Haar frontal-face cascade, shipped inside ``opencv-python-headless``.

The cascade file is ``cv2.data.haarcascades/haarcascade_frontalface_alt2.xml`` (part of the
OpenCV 4.x wheels; OpenCV 5 wheels no longer ship it, hence the ``<5`` pin of the ``cues``
extra). ``alt2`` rather than ``default``: on the scikit-image sample photos ``default`` fires on
coins, cells and the moon while ``alt2`` finds only the astronaut's face. It finds roughly
frontal faces of at least ``min_size_fraction`` of the longer side; profiles, backs of heads
and tiny faces in crowds are missed, so "no face" is weak evidence of "no person".

Detection runs on the grey image (histogram-equalised) resized so that its longer side is at
most ``max_side`` px, with ``detectMultiScale(scale_factor, min_neighbors, minSize)``,
``minSize`` = max(20 px, ``min_size_fraction`` x longer side).

Outputs (:class:`FaceCues`):

* ``n_faces``: number of detected faces.
* ``face_area_fraction``: area of the union of the face rectangles / image area (0..1).
* ``max_face_fraction``: area of the largest face rectangle / image area (0..1), 0 without
  faces.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exokiratory.models.cache import ModelCache
from exokiratory.passes.cues.text import DetectorUnavailable

CASCADE = "haarcascade_frontalface_alt2.xml"
MIN_FACE_PX = 20

_CACHE: ModelCache[FaceDetector] = ModelCache()


@dataclass(frozen=True)
class FaceCues:
    """Face-detector outputs for one image (see the module docstring)."""

    n_faces: int
    face_area_fraction: float
    max_face_fraction: float


def cascade_path() -> Path:
    """The shipped cascade file.

    Raises:
        DetectorUnavailable: OpenCV is not installed or its wheel has no Haar cascades.
    """
    try:
        import cv2
    except ImportError as exc:
        raise DetectorUnavailable(
            "opencv is not installed: pip install 'exokiratory[cues]'"
        ) from exc
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(folder) / CASCADE
    if not folder or not path.is_file():
        raise DetectorUnavailable(
            f"this OpenCV ({cv2.__version__}) ships no {CASCADE} (OpenCV 5 wheels dropped the "
            "Haar cascades): pip install 'opencv-python-headless<5'"
        )
    return path


def detector_id() -> str:
    """``opencv-<version>/<cascade stem>``: what produced the face cues."""
    import cv2

    return f"opencv-{cv2.__version__}/{cascade_path().stem}"


class FaceDetector:
    """A Haar cascade with fixed detection settings. ``detectMultiScale`` on one classifier is
    not guaranteed thread-safe: calls are serialised by a lock."""

    def __init__(
        self,
        *,
        max_side: int = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size_fraction: float = 0.03,
        threads: int = 1,
    ) -> None:
        import cv2

        cv2.setNumThreads(threads)
        self.classifier: Any = cv2.CascadeClassifier(str(cascade_path()))
        if self.classifier.empty():
            raise DetectorUnavailable(f"OpenCV could not load {cascade_path()}")
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_fraction = min_size_fraction
        self._lock = threading.Lock()

    def rects(self, rgb: np.ndarray) -> np.ndarray:
        """Face rectangles ``(N, 4)`` as ``x, y, w, h`` in ``rgb`` pixels."""
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        side = max(MIN_FACE_PX, round(self.min_size_fraction * max(grey.shape)))
        if min(grey.shape) < side:
            return np.zeros((0, 4), np.int64)
        with self._lock:
            found = self.classifier.detectMultiScale(
                grey,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(side, side),
            )
        rects = np.asarray(found, np.float64).reshape(-1, 4) / scale
        return np.round(rects).astype(np.int64)

    def cues(self, rgb: np.ndarray) -> FaceCues:
        """The face cues of one RGB image (see the module docstring)."""
        rects = self.rects(rgb)
        h, w = rgb.shape[:2]
        if len(rects) == 0:
            return FaceCues(0, 0.0, 0.0)
        mask = np.zeros((h, w), bool)
        for x, y, rw, rh in rects:
            mask[max(0, y) : y + rh, max(0, x) : x + rw] = True
        largest = float((rects[:, 2] * rects[:, 3]).max())
        area = float(h * w)
        return FaceCues(len(rects), float(mask.sum()) / area, min(1.0, largest / area))


def get_face_detector(
    *,
    max_side: int = 640,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    min_size_fraction: float = 0.03,
    threads: int = 1,
) -> FaceDetector:
    """The process-wide face detector for these settings (loaded once per process)."""
    key = (max_side, scale_factor, min_neighbors, min_size_fraction, threads)
    return _CACHE.get_or_load(
        key,
        lambda: FaceDetector(
            max_side=max_side,
            scale_factor=scale_factor,
            min_neighbors=min_neighbors,
            min_size_fraction=min_size_fraction,
            threads=threads,
        ),
    )
