"""Stored embeddings spilled to a local temporary file, read back in row batches.

:func:`spill_embeddings` streams the error-free stored embeddings of a space
(:func:`exokiratory.search.indices.stream_chunks`, record batches in part order) into one
``n x dim`` row-major file in ``image_idx`` order, float16 when the stored values are float16
(the default storage; the same rule as :func:`exokiratory.search.indices.fill_matrix`: a chunk
whose values are not all exactly float16 switches the file to float32). Nothing holds the
vectors whole in memory: readers take contiguous row ranges (:meth:`Spill.read`) or gathered
rows (:meth:`Spill.gather`) with ``pread``, so the process holds only its batches (the file's
pages stay in the OS page cache, which the kernel reclaims, not in the process).

The file is a :func:`tempfile.TemporaryFile` in the system temporary directory (``TMPDIR``, else
``/tmp``; ``directory=`` to choose): on Linux it has no name at all (``O_TMPFILE``, or unlinked
at once), so it is removed when the spill is closed or garbage-collected, and by the kernel when
the process dies, even by SIGKILL. It takes ``n x dim x 2`` bytes of disk (15 GB at
10^7 x 768).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from exokiratory.search.ivf import CHANGED, exact_half, positions

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

#: rows read or converted at a time by the batch helpers
SPILL_BATCH = 65_536


class Spill:
    """``n x dim`` vectors (float16 or float32) in an anonymous temporary file."""

    def __init__(
        self, n: int, dim: int, dtype: Any = np.float16, directory: str | None = None
    ) -> None:
        self.n, self.dim = int(n), int(dim)
        self.dtype = np.dtype(dtype)
        self.directory = directory
        self._file: Any = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close)
        self._file.truncate(self.n * self.row_bytes)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    def close(self) -> None:
        """Remove the file now (else when the spill is garbage-collected)."""
        self._file.close()

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fd(self) -> int:
        if self._file.closed:
            raise RuntimeError("the embedding spill is closed")
        return int(self._file.fileno())

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows ``start .. start + len(rows)`` (converted to the spill's dtype)."""
        if start < 0 or start + len(rows) > self.n:
            raise IndexError(f"rows {start}..{start + len(rows)} outside the spill of {self.n}")
        data = np.ascontiguousarray(rows, self.dtype).reshape(-1, self.dim)
        view = data.data.cast("B")
        offset, done = start * self.row_bytes, 0
        while done < len(view):
            done += os.pwrite(self._fd(), view[done:], offset + done)

    def write_at(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Row ``i`` of ``rows`` at row ``positions[i]``, one write per run of consecutive
        positions (a part's rows are one run)."""
        positions = np.asarray(positions, np.int64)
        if positions.size == 0:
            return
        order = np.argsort(positions, kind="stable")
        pos = positions[order]
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, pos.size].tolist(), strict=True):
            self.write(int(pos[lo]), rows[order[lo:hi]])

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo .. hi`` as stored (``hi`` clipped to ``n``)."""
        hi = min(hi, self.n)
        out = np.empty((max(hi - lo, 0), self.dim), self.dtype)
        self._read_into(out, lo)
        return out

    def _read_into(self, out: np.ndarray, start: int) -> None:
        view = out.data.cast("B")
        offset, done = start * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd(), [view[done:]], offset + done)
            if got <= 0:
                raise RuntimeError("the embedding spill is shorter than expected")
            done += got

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (any order, repeats allowed) as stored, one read per run of
        consecutive row numbers."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"row numbers outside the spill of {self.n}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        buf = np.empty((uniq.size, self.dim), self.dtype)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for lo, hi in zip(
            np.r_[0, breaks].tolist(), np.r_[breaks, uniq.size].tolist(), strict=True
        ):
            self._read_into(buf[lo:hi], int(uniq[lo]))
        if uniq.size == rows.size and np.array_equal(uniq, rows):
            return buf
        return buf[inverse.reshape(-1)]

    def batches(self, batch: int = SPILL_BATCH) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows as stored) of consecutive batches of ``batch`` rows."""
        for lo in range(0, self.n, batch):
            yield lo, self.read(lo, lo + batch)

    def update_digest(self, h: Any, batch: int = SPILL_BATCH) -> None:
        """Feed the stored bytes (dtype and shape first) to the hash ``h``, batch by batch."""
        h.update(f"{self.dtype.str}:{self.n}x{self.dim}:".encode())
        for _, rows in self.batches(batch):
            h.update(rows.data.cast("B"))

    def to_float32(self) -> Spill:
        """A float32 copy of this spill (this one is closed)."""
        out = Spill(self.n, self.dim, np.float32, self.directory)
        for lo, rows in self.batches():
            out.write(lo, rows.astype(np.float32))
        self.close()
        return out

    def memmap(self) -> np.memmap:
        """The file as a read-only ``np.memmap`` (for code that needs an array; its pages
        count in the process's resident set while mapped and touched)."""
        return np.memmap(self._file, dtype=self.dtype, mode="r", shape=self.shape)


@dataclass
class SpilledSpace:
    """The stored embeddings of one space: the spill (rows in ``image_idx`` order), each row's
    ``image_idx`` (int64) and ``image_id`` (Arrow strings), and the one ``model_id``."""

    spill: Spill
    image_idx: np.ndarray
    ids: pa.Array
    model_id: str


def spill_embeddings(
    cat: Catalog,
    space: str,
    directory: str | None = None,
    keys: tuple[pa.Table, str, str, int] | None = None,
) -> SpilledSpace:
    """Stream the error-free stored embeddings of ``space`` into a :class:`Spill`. ``keys``:
    the result of ``indices._stored_keys(cat, space, False)`` when the caller has it.

    Raises:
        ValueError: no embeddings yet, or mixed models (:func:`indices._stored_keys`).
        RuntimeError: the embeddings changed while they were read.
    """
    from exokiratory.search import indices

    if keys is None:
        keys = indices._stored_keys(cat, space, False)
    key_rows, _, model_id, dim = keys
    idx = key_rows.column("image_idx").to_numpy()
    ids = key_rows.column("image_id").combine_chunks()
    spill = Spill(idx.size, dim, np.float16, directory)
    seen = 0
    try:
        for chunk_ids, vectors in indices.stream_chunks(cat, space, False)():
            pos = positions(idx, chunk_ids)
            if spill.dtype == np.float16:
                half = exact_half(vectors)
                if half is not None:
                    vectors = half
                else:
                    log.info("stored %s embeddings are not float16: spilling float32", space)
                    spill = spill.to_float32()
            spill.write_at(pos, vectors)
            seen += pos.size
    except BaseException:
        spill.close()
        raise
    if seen != idx.size:
        spill.close()
        raise RuntimeError(CHANGED)
    return SpilledSpace(spill, idx, ids, model_id)
