"""Flag rules of the ``probe`` family: images that cannot be read or decoded.

``is_corrupt``: unreadable in PASS 0 (the scan's ``status`` is ``unreadable``), or failed to
decode in PASS 1 (``sense``) or in the ``probe`` pass; ``corrupt_reason``: the scan's error for
an unreadable file, else the first decode error (PASS 1, then probe).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exokiratory.engine.flag_rules import Columns, FlagFrame, FlagInput, FlagSource, flag_rule
from exokiratory.engine.step import PassParams


def _probe_errors(source: FlagSource) -> pa.Table | None:
    """The probe's error per row, when the probe view exists."""
    if "probe" not in source.catalog.views:
        return None
    return source.aligned(
        "SELECT image_id, error AS probe_error FROM probe WHERE error IS NOT NULL"
    )


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
    probe_err = probe.column("probe_error") if probe is not None else pa.nulls(frame.n)
    sense_err = _strings(t.column("sense_error"))
    # the sense error, unless null or empty, else the probe's
    decode = pc.if_else(_true(pc.not_equal(sense_err, "")), sense_err, _strings(probe_err))
    unreadable = _true(pc.equal(_strings(t.column("status")), "unreadable"))
    reason = pc.if_else(unreadable, _strings(t.column("scan_error")), decode)
    is_corrupt = np.asarray(pc.is_valid(reason).to_numpy(zero_copy_only=False), dtype=bool)
    return {"is_corrupt": is_corrupt, "corrupt_reason": reason}


def _strings(values: Any) -> Any:
    return pc.cast(values, pa.string())


def _true(mask: Any) -> Any:
    return pc.fill_null(mask, False)
