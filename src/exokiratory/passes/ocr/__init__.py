"""OCR (PASS 6): recognised text of the text-heavy images, with lines, boxes and confidences.

* :mod:`exokiratory.passes.ocr.engines`: the engines (rapidocr, whose detection, direction and
  recognition ONNX models ship in its wheel; Tesseract from the system through pytesseract).
* :mod:`exokiratory.passes.ocr.text`: pure functions from recognised lines to the stored columns.
* :mod:`exokiratory.passes.ocr.step`: the ``ocr`` pass and its views.
* :mod:`exokiratory.passes.ocr.search`: full-text search over the ``ocr`` view.

Needs the ``ocr`` extra (``pip install 'exokiratory[ocr]'``); this ``__init__`` imports none of it.
"""

from __future__ import annotations

RAPIDOCR_REQUIREMENTS: tuple[str, ...] = ("cv2", "onnxruntime", "rapidocr")
"""Modules the default engine imports."""

TESSERACT_REQUIREMENTS: tuple[str, ...] = ("pytesseract",)
"""Modules the Tesseract engine imports (it also needs the ``tesseract`` program)."""
