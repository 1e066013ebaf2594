"""Flag rules of the scan (PASS 0): exact duplicates.

Exact duplicates are one image (one ``image_id``: the hash of the bytes) with several paths:
``n_paths`` (paths present now) and ``has_exact_duplicates`` (more than one).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from exokiratory.engine.flag_rules import Columns, FlagFrame, flag_rule
from exokiratory.engine.step import PassParams


@flag_rule(
    "exact_duplicates",
    [pa.field("n_paths", pa.int64()), pa.field("has_exact_duplicates", pa.bool_())],
    order=60,
)
def exact_duplicates(frame: FlagFrame, p: PassParams) -> Columns:
    """Images found under several paths (from the manifest)."""
    n_paths = frame.num("n_paths", np.int64)
    return {"n_paths": n_paths, "has_exact_duplicates": n_paths > 1}
