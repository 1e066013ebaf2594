"""From recognised lines to the stored OCR columns (pure functions, no engine).

* ``text``: the lines in the engine's reading order, joined by a space when two consecutive
  lines sit on the same row (their vertical extents overlap by at least half the lower one's
  height: rapidocr cuts a row at wide gaps, e.g. a section number and its title) and by a
  newline otherwise.
* ``n_chars``: characters of ``text`` that are not white space.
* ``mean_confidence``: mean of the line confidences (null without lines).
* ``text_area_fraction``: area of the union of the line boxes (axis-aligned) / image area.
* ``n_word_chars``: letters and digits of the *words* of lines recognised with confidence >=
  :data:`WORD_MIN_CONFIDENCE` (0.8); a word is a white-space separated token, stripped of
  punctuation, with at least 2 letters or digits of which at least 2 differ. Recognised
  characters, not detector boxes: stripes, grids and textures that a text detector boxes read
  as short, repetitive or low-confidence strings ("I", "lll", "-", "11111") and count nothing.
  The ``ocr_text_confirmed`` view cuts it (``passes.ocr.confirm_min_chars``, 20: four or five
  words).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exokiratory.passes.ocr.engines import OcrLine

WORD_MIN_CONFIDENCE = 0.8


def same_row(a: OcrLine, b: OcrLine) -> bool:
    """Whether two boxes overlap vertically by at least half the lower one's height."""
    overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    lower = min(a.box[3] - a.box[1], b.box[3] - b.box[1])
    return lower > 0 and overlap >= 0.5 * lower


def full_text(lines: Sequence[OcrLine]) -> str:
    """The lines joined in reading order (see the module docstring)."""
    parts: list[str] = []
    for i, line in enumerate(lines):
        if i:
            parts.append(" " if same_row(lines[i - 1], line) else "\n")
        parts.append(line.text.strip())
    return "".join(parts).strip()


def n_chars(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


def mean_confidence(lines: Sequence[OcrLine]) -> float | None:
    return float(np.mean([ln.confidence for ln in lines])) if lines else None


def word_chars(lines: Sequence[OcrLine], min_confidence: float = WORD_MIN_CONFIDENCE) -> int:
    """Letters and digits in the words of confident lines (see the module docstring)."""
    total = 0
    for line in lines:
        if line.confidence < min_confidence:
            continue
        for token in line.text.split():
            alnum = [c for c in token if c.isalnum()]
            if len(alnum) >= 2 and len(set(alnum)) >= 2:
                total += len(alnum)
    return total


def text_area_fraction(lines: Sequence[OcrLine], height: int, width: int) -> float:
    """Union of the line boxes / image area (boxes in the same pixels as ``height, width``)."""
    if not lines or height <= 0 or width <= 0:
        return 0.0
    mask = np.zeros((height, width), bool)
    for line in lines:
        x0, y0, x1, y1 = line.box
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return float(mask.mean())
