"""Digests of long Arrow string columns without one Python string per row at once."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: strings joined and hashed at a time by :func:`update_joined`
JOIN_BATCH = 100_000


def update_joined(
    h: Any, strings: pa.Array | pa.ChunkedArray, sep: str, batch: int = JOIN_BATCH
) -> None:
    """``h.update(sep.join(strings).encode())``, ``batch`` strings joined at a time by one
    Arrow kernel: the same digest, without a Python string per row."""
    for lo in range(0, len(strings), batch):
        part = strings.slice(lo, batch)
        part = part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part
        if part.null_count:
            raise ValueError("cannot digest null strings")
        lists = pa.ListArray.from_arrays(pa.array([0, len(part)], pa.int32()), part)
        joined = pc.binary_join(lists, sep)[0].as_buffer()
        h.update((sep if lo else "").encode())
        h.update(joined if joined is not None else b"")
