"""Membership of registered image IDs in ~16 bytes per ID (the scanner's "is this content known").

An image ID is 32 hex digits (128 bits). :class:`IdSet` keeps them as a sorted NumPy array of
16-byte values (binary search) plus a Python set of the IDs added since the last merge; the set
is merged into the array once it holds :data:`MERGE_AT` IDs, so the Python objects stay bounded
however many images a scan registers (a merge copies the array once: ~0.1 s at 10^7 IDs).

NumPy's ``S16`` values drop trailing zero bytes when read back as Python ``bytes``; every key is
therefore compared as a NumPy ``S16`` scalar (from :func:`numpy.frombuffer`), never as ``bytes``,
which is exact because all keys are exactly 16 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

#: new IDs held in a Python set before they are merged into the sorted array
MERGE_AT = 65_536

ID_BYTES = 16
_DTYPE = f"S{ID_BYTES}"


def ids_from_arrow(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """16-byte binary values (e.g. DuckDB's ``unhex(image_id)``) as an ``S16`` array (a copy)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError("image IDs must not be null")
    fixed = arr.cast(pa.binary(ID_BYTES))
    if len(fixed) == 0:
        return np.empty(0, _DTYPE)
    data = fixed.buffers()[1]
    return np.frombuffer(data, _DTYPE, count=len(fixed), offset=fixed.offset * ID_BYTES).copy()


def _key(image_id: str) -> np.bytes_:
    raw = bytes.fromhex(image_id)
    if len(raw) != ID_BYTES:
        raise ValueError(f"an image ID is {2 * ID_BYTES} hex digits, not {image_id!r}")
    key: np.bytes_ = np.frombuffer(raw, _DTYPE)[0]
    return key


class IdSet:
    """A set of image IDs (hex strings) with ~16 bytes per member; see the module docstring."""

    def __init__(self, chunks: Iterable[np.ndarray] = ()) -> None:
        parts = [np.asarray(c, _DTYPE) for c in chunks]
        self._base = np.sort(np.concatenate(parts)) if parts else np.empty(0, _DTYPE)
        self._new: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._base) + len(self._new)

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        return self._has(_key(image_id))

    def _has(self, key: np.bytes_) -> bool:
        if bytes(key) in self._new:  # the bytes without trailing zeros: the same for equal keys
            return True
        i = int(np.searchsorted(self._base, key))
        return i < len(self._base) and bool(self._base[i] == key)

    def add(self, image_id: str) -> None:
        key = _key(image_id)
        if self._has(key):
            return
        self._new.add(bytes(key))
        if len(self._new) >= MERGE_AT:
            self.merge()

    def merge(self) -> None:
        """Move the IDs added since the last merge into the sorted array."""
        if not self._new:
            return
        new = np.sort(np.array(list(self._new), _DTYPE))
        self._base = np.insert(self._base, np.searchsorted(self._base, new), new)
        self._new.clear()
