"""The flags' input rows: one per registered image, the manifest columns joined to the PASS 1
scalars the rules read. Its own module (no rule imports) so that a rule's side input can read a
narrow copy of it (the near-duplicate groups read their columns only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: PASS 1 columns every row reads (whether it was sensed)
BASE_FEATURES: tuple[str, ...] = ("entropy_score",)


def flags_input_sql(features: Sequence[str]) -> str:
    """One row per registered image (``image_idx`` order): manifest columns, the PASS 1
    ``features`` (scalars only: never the histogram lists) and the PASS 1 error."""
    cols = "".join(f"f.{c}, " for c in dict.fromkeys((*BASE_FEATURES, *features)))
    return f"""
SELECT i.image_id, i.image_idx, i.status, i.error AS scan_error, i.n_paths,
       {cols}f.error AS sense_error
FROM images i
LEFT JOIN features f USING (image_id)
ORDER BY i.image_idx
"""


def sensed_rows(t: pa.Table) -> np.ndarray:
    """Rows with PASS 1 signals: no sense error and a finite entropy."""
    entropy = t.column("entropy_score").to_numpy(zero_copy_only=False).astype(np.float64)
    no_error = pc.is_null(t.column("sense_error")).to_numpy(zero_copy_only=False)
    return np.asarray(no_error, dtype=bool) & np.isfinite(entropy)
