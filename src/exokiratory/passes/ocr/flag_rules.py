"""Flag rule of the ``ocr`` family: OCR confirms or refutes ``is_text_heavy``.

Recognised characters, not detector boxes (the cues' text detector boxes stripes and grids as
text lines; the recogniser reads them as junk): ``n_word_chars`` of the ``ocr`` view (letters
and digits of real words on confident lines, see :mod:`exokiratory.passes.ocr.text`).

* ``text_confirmed_score`` = min(1, ``n_word_chars`` / ``text_confirm_chars``) (20 characters,
  four or five words); null for an image OCR did not read (not routed, or failed).
* ``is_text_confirmed``: ``text_confirmed_score`` = 1 (at least ``text_confirm_chars`` word
  characters read).
* ``is_text_refuted``: flagged text-heavy, read by OCR, and not confirmed (striped or textured
  images that only look like text to the cheap signals).

The flags are re-derived after the ``ocr`` pass writes rows (an optional read: OCR is routed by
the flags it then refines); the OCR route does not use these columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.engine.step import PassParams


class TextConfirmParams(PassParams):
    text_confirm_chars: int = Field(
        20, ge=1, description="word characters read by OCR that confirm text"
    )


def _ocr_rows(source: FlagSource) -> pa.Table | None:
    if "ocr" not in source.catalog.views:
        return None
    return source.aligned(
        "SELECT image_id, n_word_chars FROM ocr WHERE error IS NULL AND n_word_chars IS NOT NULL"
    )


OCR_ROWS = FlagInput("ocr", _ocr_rows)


@flag_rule(
    "text_confirmed",
    [
        pa.field("text_confirmed_score", pa.float32()),
        pa.field("is_text_confirmed", pa.bool_()),
        pa.field("is_text_refuted", pa.bool_()),
    ],
    order=35,
    params=TextConfirmParams,
    needs=("is_text_heavy",),
    inputs=(OCR_ROWS,),
    optional_reads=("ocr",),
)
def text_confirmed(frame: FlagFrame, p: TextConfirmParams) -> Columns:
    """See the module docstring."""
    rows = frame.input("ocr")
    chars = np.full(frame.n, np.nan)
    if rows is not None:
        chars = rows.column("n_word_chars").to_numpy(zero_copy_only=False).astype(np.float64)
    score = np.clip(chars / p.text_confirm_chars, 0.0, 1.0)
    read = np.isfinite(score)
    confirmed = read & (np.nan_to_num(chars) >= p.text_confirm_chars)
    heavy = np.asarray(frame["is_text_heavy"], dtype=bool)
    return {
        "text_confirmed_score": score.astype(np.float32),
        "is_text_confirmed": confirmed,
        "is_text_refuted": heavy & read & ~confirmed,
    }
