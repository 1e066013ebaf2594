"""Flag rules of the ``probe`` family: images that cannot be read or decoded.

``is_corrupt``: unreadable in PASS 0 (the scan's ``status`` is ``unreadable``), or failed to
decode in PASS 1 (``sense``) or in the ``probe`` pass; ``corrupt_reason``: the scan's error for
an unreadable file, else the first decode error (PASS 1, then probe).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.engine.step import PassParams


def _probe_errors(source: FlagSource) -> pa.Table | None:
    """The probe's error per row, when the probe view exists."""
    if "probe" not in source.catalog.views:
        return None
    return source.aligned("SELECT image_id, error AS probe_error FROM probe")


PROBE_ERRORS = FlagInput("probe_errors", _probe_errors)


@flag_rule(
    "corrupt",
    [pa.field("is_corrupt", pa.bool_()), pa.field("corrupt_reason", pa.string())],
    order=10,
    inputs=(PROBE_ERRORS,),
    reads=("sense", "probe"),
)
def corrupt(frame: FlagFrame, p: PassParams) -> Columns:
    """Unreadable or undecodable, with the reason (see the module docstring)."""
    t = frame.table
    probe = frame.input("probe_errors")
    probe_err: list[Any] = (
        probe.column("probe_error").to_pylist() if probe is not None else [None] * frame.n
    )
    reason = [
        scan_err if status == "unreadable" else (sense_err or probe_e)
        for status, scan_err, sense_err, probe_e in zip(
            t.column("status").to_pylist(),
            t.column("scan_error").to_pylist(),
            t.column("sense_error").to_pylist(),
            probe_err,
            strict=True,
        )
    ]
    return {"is_corrupt": np.array([r is not None for r in reason]), "corrupt_reason": reason}
