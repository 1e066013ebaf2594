"""Cheap detector cues for the semantic flags: text regions and faces, from real detectors whose
weights ship inside their PyPI wheels (nothing is downloaded at run time).

* :mod:`exokiratory.passes.cues.text`: the DB text-detection model shipped in the ``rapidocr`` wheel,
  run with onnxruntime (detection only, no recognition).
* :mod:`exokiratory.passes.cues.faces`: dlib's HOG frontal-face detector, compiled into the
  ``dlib-bin`` wheels (OpenCV's Haar cascade from ``opencv-python-headless`` on request).

Both need the ``cues`` extra (``pip install 'exokiratory[cues]'``); this package's ``__init__``
imports neither, so the rest of exokiratory runs without them.
"""

from __future__ import annotations

CUES_REQUIREMENTS: tuple[str, ...] = ("cv2", "onnxruntime", "rapidocr", "dlib")
"""Modules the detectors import (checked by the ``cues`` pass's ``missing_requirement``)."""
