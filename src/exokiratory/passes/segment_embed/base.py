"""Base of the passes over segments (PASS 4): units are the rows of the ``segments`` view.

A unit is one segment (key ``segment_id``), joined with one present path of its image. Units
are planned in ``(image_idx, mask_index)`` order, so a batch holds whole images except at its
two ends; within a batch every image is read and decoded **once** for all of its segments
(:func:`exokiratory.passes.segment_embed.crops.decode_at_mask_size`, to the mask raster), its masks are
decoded from their RLE in one call, and crops are cut on the fly (no crop files). An image that
cannot be read or decoded gives an ``error`` row for each of its segments; one bad segment
never stops the others. Images are prepared by ``decode_threads`` threads (I/O and decoding
release the GIL), at most ``2 x decode_threads`` images ahead.
"""

from __future__ import annotations

import itertools
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from exokiratory.engine.step import BatchContext, ParamsT, Pass
from exokiratory.engine.threads import in_threads
from exokiratory.passes.segment.rle import decode_rle_batch
from exokiratory.passes.segment_embed import crops

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SEGMENT_UNITS_SQL = """
SELECT s.segment_id, s.image_id, s.image_idx, s.mask_index, s.mask_height, s.mask_width,
       s.rle_counts, s.bbox, p.path, p.source
FROM segments s
JOIN image_paths p
  USING (image_id)
ORDER BY s.image_idx, s.mask_index
"""
"""Every kept segment with one present path of its image, in ``(image_idx, mask_index)``
order (see the segments contract: ``segments`` hides per-image marker rows)."""

SEGMENT_KEY_FIELDS: tuple[pa.Field, ...] = (
    pa.field("segment_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image_idx", pa.int64(), nullable=False),
    pa.field("mask_index", pa.int32(), nullable=False),
)
"""The identifying columns every segment pass writes first."""


@dataclass
class ImageSegments:
    """One image of a batch with its segments (``rows``: the units, in mask order)."""

    rows: list[dict[str, Any]]
    rgb: np.ndarray | None = None
    masks: np.ndarray | None = None
    error: str | None = None


def group_by_image(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive units of the same image (units come ordered by image)."""
    return [list(g) for _, g in itertools.groupby(rows, key=lambda r: r["image_id"])]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class SegmentPass(Pass[ParamsT]):
    """A pass over segments: decode each image once per batch, then one output per segment.

    Subclasses implement :meth:`prepare` (per image, in a thread: what to keep for each of its
    segments, or an error text) and :meth:`finish` (the output table of the whole batch), and
    may override :meth:`setup` (per-batch state, e.g. the model).
    """

    key = ("segment_id",)
    units_sql = SEGMENT_UNITS_SQL
    reads = ("segment",)

    @property
    def decode_threads(self) -> int:
        """Threads reading and decoding the images of a batch."""
        return 2

    def units(self, catalog: Catalog) -> pa.Table:
        if "segments" not in catalog.views:
            raise RuntimeError(
                f"{self.name} needs PASS 3 segments: run `exokiratory run segment` first"
            )
        return catalog.query(self.units_sql)

    def load_image(self, rows: list[dict[str, Any]], ctx: BatchContext) -> ImageSegments:
        """Read and decode one image to its mask raster, and decode its segments' masks."""
        first = rows[0]
        height, width = int(first["mask_height"]), int(first["mask_width"])
        try:
            data = ctx.read_bytes(first["path"], first.get("source"))
            rgb = crops.decode_at_mask_size(data, width, height, ctx.max_image_pixels)
            sizes = {(int(r["mask_height"]), int(r["mask_width"])) for r in rows}
            if len(sizes) != 1:
                raise ValueError(f"segments of one image disagree on the mask raster: {sizes}")
            masks = decode_rle_batch([r["rle_counts"] for r in rows], height, width)
        except Exception as exc:  # a bad image is rows with errors, never a crash
            log.debug("%s: image %s failed: %s", self.name, first["image_id"], exc)
            return ImageSegments(rows, error=_error_text(exc))
        return ImageSegments(rows, rgb, masks)

    def prepared(
        self, rows: list[dict[str, Any]], ctx: BatchContext, state: Any
    ) -> Iterator[list[Any]]:
        """Per image of the batch, in order: :meth:`prepare`'s list (or the image's error for
        each of its segments). Images are loaded and prepared by threads, at most
        ``2 x decode_threads`` ahead."""

        def task(group: list[dict[str, Any]]) -> list[Any]:
            image = self.load_image(group, ctx)
            if image.error is not None:
                return [image.error] * len(group)
            return self.prepare(image, state)

        groups = group_by_image(rows)
        if self.decode_threads <= 1:
            return map(task, groups)
        return in_threads(task, groups, self.decode_threads)

    def setup(self, ctx: BatchContext) -> Any:
        """Per-batch state shared by :meth:`prepare` and :meth:`finish` (e.g. a loaded model)."""
        return None

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        state = self.setup(ctx)
        rows = units.to_pylist()
        prepared: list[Any] = []
        for per_image in self.prepared(rows, ctx, state):
            prepared.extend(per_image)
        return self.finish(rows, prepared, state)

    def per_segment(
        self, image: ImageSegments, fn: Callable[[dict[str, Any], np.ndarray], Any]
    ) -> list[Any]:
        """``fn(row, mask)`` for each segment of a decoded image; an exception is that
        segment's error text."""
        out: list[Any] = []
        if image.masks is None:  # pragma: no cover - load_image sets it or an error
            raise RuntimeError("image not decoded")
        for row, mask in zip(image.rows, image.masks, strict=True):
            try:
                out.append(fn(row, mask))
            except Exception as exc:
                out.append(_error_text(exc))
        return out

    @abstractmethod
    def prepare(self, image: ImageSegments, state: Any) -> list[Any]:
        """Per segment of a decoded image (in a thread): what :meth:`finish` needs, or an
        error text (str)."""

    @abstractmethod
    def finish(self, rows: list[dict[str, Any]], prepared: list[Any], state: Any) -> pa.Table:
        """The output table of the batch (one row per unit, in unit order)."""

    @staticmethod
    def key_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {f.name: [r[f.name] for r in rows] for f in SEGMENT_KEY_FIELDS}
