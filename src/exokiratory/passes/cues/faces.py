"""Faces, from a detector whose model ships inside its wheel (nothing is downloaded).

Two detectors (``face_model`` of the ``cues`` pass):

``dlib-hog`` (default)
    dlib's frontal-face detector (``dlib.get_frontal_face_detector``): HOG features and a linear
    SVM over an image pyramid (Dalal-Triggs with max-margin object detection, King 2015). Its
    model is compiled into dlib itself (Boost Software License), shipped by the ``dlib-bin``
    wheels (prebuilt for Linux, macOS and Windows; the ``dlib`` source package provides the same
    module). It is run on the RGB image resized so that its longer side is at most ``max_side``
    px, upsampled ``upsample`` times (the detector's window is 80 px; one upsampling finds faces
    from about 40 px, i.e. 6 % of a 640 px side), keeping detections whose SVM score is at least
    ``min_score`` (0.2; dlib's own cut is 0, which adds a second, false face at 0.12 on the
    astronaut photo; the 0.2 was set on the bench's images, read its numbers as agreement).
``haar-alt2``
    OpenCV's Haar frontal-face cascade ``cv2.data.haarcascades/haarcascade_frontalface_alt2.xml``
    (opencv-python-headless 4.x wheels; OpenCV 5 wheels no longer ship it), run on the
    histogram-equalised grey image with ``detectMultiScale(scale_factor, min_neighbors,
    minSize)``. It was the default until issue 17: it fires on abstract patterns (4 of 60
    people-free Debian wallpapers, against none for ``dlib-hog``: ``bench/human_cue.py``) and is
    kept to compare.

Both find roughly frontal faces of at least ``min_size_fraction`` of the longer side (the
smallest detection kept; 20 px at least); profiles, backs of heads and tiny faces in crowds are
missed, so "no face" is weak evidence of "no person".

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
from typing import Any, Literal

import numpy as np

from exokiratory.models.cache import ModelCache
from exokiratory.passes.cues.text import DetectorUnavailable

CASCADE = "haarcascade_frontalface_alt2.xml"
MIN_FACE_PX = 20
FaceModel = Literal["dlib-hog", "haar-alt2"]
DEFAULT_FACE_MODEL: FaceModel = "dlib-hog"

_CACHE: ModelCache[FaceDetector] = ModelCache()


@dataclass(frozen=True)
class FaceCues:
    """Face-detector outputs for one image (see the module docstring)."""

    n_faces: int
    face_area_fraction: float
    max_face_fraction: float


@dataclass(frozen=True)
class FaceSettings:
    """Detection settings (the ``face_*`` parameters of the ``cues`` pass)."""

    model: FaceModel = DEFAULT_FACE_MODEL
    max_side: int = 640
    upsample: int = 1  # dlib-hog
    min_score: float = 0.2  # dlib-hog
    scale_factor: float = 1.1  # haar-alt2
    min_neighbors: int = 5  # haar-alt2
    min_size_fraction: float = 0.03
    threads: int = 1


def cascade_path() -> Path:
    """The shipped Haar cascade file (model ``haar-alt2``).

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


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise DetectorUnavailable(
            "dlib is not installed (face model dlib-hog): pip install 'exokiratory[cues]'"
        ) from exc
    return dlib


def detector_id(model: FaceModel = DEFAULT_FACE_MODEL) -> str:
    """What produced the face cues: ``dlib-<version>/frontal_face_hog`` or
    ``opencv-<version>/<cascade stem>``."""
    if model == "dlib-hog":
        return f"dlib-{_dlib().__version__}/frontal_face_hog"
    import cv2

    return f"opencv-{cv2.__version__}/{cascade_path().stem}"


def _grey_or_rgb(rgb: np.ndarray, max_side: int, grey: bool) -> tuple[np.ndarray, float]:
    """``rgb`` (grey when asked) resized so that its longer side is at most ``max_side``."""
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = np.ascontiguousarray(rgb)
    if grey:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), scale


class FaceDetector:
    """One face model with fixed settings. Detection calls are serialised by a lock (neither
    library promises thread-safe detection on one detector object)."""

    def __init__(self, settings: FaceSettings | None = None) -> None:
        self.settings = settings or FaceSettings()
        self._lock = threading.Lock()
        if self.settings.model == "dlib-hog":
            self.model: Any = _dlib().get_frontal_face_detector()
        elif self.settings.model == "haar-alt2":
            import cv2

            cv2.setNumThreads(self.settings.threads)
            self.model = cv2.CascadeClassifier(str(cascade_path()))
            if self.model.empty():
                raise DetectorUnavailable(f"OpenCV could not load {cascade_path()}")
        else:
            raise ValueError(f"unknown face model {self.settings.model!r}")

    def rects(self, rgb: np.ndarray) -> np.ndarray:
        """Face rectangles ``(N, 4)`` as ``x, y, w, h`` in ``rgb`` pixels."""
        s = self.settings
        hog = s.model == "dlib-hog"
        img, scale = _grey_or_rgb(rgb, s.max_side, grey=not hog)
        side = max(MIN_FACE_PX, round(s.min_size_fraction * max(img.shape[:2])))
        if min(img.shape[:2]) < side:
            return np.zeros((0, 4), np.int64)
        found = self._hog(img) if hog else self._haar(img, side)
        found = found[np.minimum(found[:, 2], found[:, 3]) >= side]
        return np.round(found / scale).astype(np.int64)

    def _hog(self, img: np.ndarray) -> np.ndarray:
        with self._lock:
            dets, scores, _ = self.model.run(img, self.settings.upsample, self.settings.min_score)
        boxes = [
            (d.left(), d.top(), d.right() - d.left(), d.bottom() - d.top())
            for d, score in zip(dets, scores, strict=True)
            if score >= self.settings.min_score
        ]
        return np.asarray(boxes, np.float64).reshape(-1, 4)

    def _haar(self, grey: np.ndarray, side: int) -> np.ndarray:
        import cv2

        grey = cv2.equalizeHist(grey)
        with self._lock:
            found = self.model.detectMultiScale(
                grey,
                scaleFactor=self.settings.scale_factor,
                minNeighbors=self.settings.min_neighbors,
                minSize=(side, side),
            )
        return np.asarray(found, np.float64).reshape(-1, 4)

    def cues(self, rgb: np.ndarray) -> FaceCues:
        """The face cues of one RGB image (see the module docstring)."""
        rects = self.rects(rgb)
        h, w = rgb.shape[:2]
        if len(rects) == 0:
            return FaceCues(0, 0.0, 0.0)
        mask = np.zeros((h, w), bool)
        for x, y, rw, rh in rects:
            mask[max(0, y) : max(0, y + rh), max(0, x) : max(0, x + rw)] = True
        largest = float((rects[:, 2] * rects[:, 3]).max())
        area = float(h * w)
        return FaceCues(len(rects), float(mask.sum()) / area, min(1.0, largest / area))


def get_face_detector(settings: FaceSettings | None = None, **fields: Any) -> FaceDetector:
    """The process-wide face detector for these settings (loaded once per process);
    ``fields`` override :class:`FaceSettings` fields (``model``, ``max_side``...)."""
    base = settings or FaceSettings()
    chosen = FaceSettings(**{**base.__dict__, **fields})
    return _CACHE.get_or_load(chosen, lambda: FaceDetector(chosen))
