"""Digests of long Arrow string columns without one Python string per row at once."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

#: strings joined and hashed at a time by :func:`update_joined`
JOIN_BATCH = 100_000


def update_joined(
    h: Any, strings: pa.Array | pa.ChunkedArray, sep: str, batch: int = JOIN_BATCH
) -> None:
    """``h.update(sep.join(strings).encode())``, ``batch`` strings at a time: the same digest,
    without joining 10^7 Python strings at once."""
    for lo in range(0, len(strings), batch):
        text = sep.join(strings.slice(lo, batch).to_pylist())
        h.update(((sep if lo else "") + text).encode())
