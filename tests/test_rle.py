"""COCO RLE round trip (pycocotools compatibility) for stored segment masks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from exokiratory.passes.segment.rle import (
    decode_rle,
    decode_rle_batch,
    encode_rle,
    encode_rle_batch,
    rle_area,
)


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        dtype=bool,
        shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
        elements=st.booleans(),
    )
)
def test_round_trip_random_masks(mask: np.ndarray) -> None:
    counts = encode_rle(mask)
    assert isinstance(counts, bytes)
    decoded = decode_rle(counts, *mask.shape)
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)
    assert rle_area(counts, *mask.shape) == int(mask.sum())


def test_counts_are_pycocotools_counts() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((23, 31)) > 0.6
    counts = encode_rle(mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert counts == reference["counts"]
    decoded = coco_mask.decode({"size": [23, 31], "counts": counts})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_column_major_order() -> None:
    # One foreground pixel at row 0, column 1 of a 2x2 raster: column-major runs are
    # [2 zeros, 1 one, 1 zero]; a row-major encoder would give [1, 1, 2].
    mask = np.array([[0, 1], [0, 0]], dtype=bool)
    counts = encode_rle(mask)
    assert counts == coco_mask.frPyObjects({"size": [2, 2], "counts": [2, 1, 1]}, 2, 2)["counts"]
    assert counts != encode_rle(mask.T)
    rle = {"size": [2, 2], "counts": counts}
    assert coco_mask.toBbox(rle).tolist() == [1.0, 0.0, 1.0, 1.0]
    np.testing.assert_array_equal(decode_rle(counts, 2, 2), mask)


def test_batch_matches_single_and_empty() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((5, 17, 9)) > 0.5
    masks[2] = False
    masks[3] = True
    batch = encode_rle_batch(masks)
    assert batch == [encode_rle(m) for m in masks]
    assert encode_rle_batch(np.zeros((0, 4, 4), dtype=bool)) == []
    np.testing.assert_array_equal(decode_rle(batch[2], 17, 9), np.zeros((17, 9), bool))
    np.testing.assert_array_equal(decode_rle_batch(batch, 17, 9), masks)
    assert decode_rle_batch([], 17, 9).shape == (0, 17, 9)
