"""Tests for perceptual hashes and the near-duplicate index (fast, offline)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from exokiratory.passes.flags.neardup import (
    Clause,
    connected_components,
    find_near_duplicates,
    find_pairs,
    mih_pairs,
)
from exokiratory.passes.sense.hashes import (
    HASH_COLUMNS,
    _popcount_fallback,
    compute_hashes,
    hamming,
    to_int64,
    to_uint64,
)

SKI = Path(np.__file__).resolve().parents[1] / "skimage" / "data"


def _brute_pairs(codes: np.ndarray, t: int) -> set[tuple[int, int]]:
    d = hamming(codes[:, None], codes[None, :])
    i, j = np.nonzero(np.triu(d <= t, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _planted(rng: np.random.Generator, n: int, n_near: int, max_flips: int) -> np.ndarray:
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    if n == 0 or n_near == 0:
        return codes
    src = codes[rng.integers(0, n, n_near)].copy()
    for k in range(max_flips):
        flip = rng.integers(0, 64, n_near).astype(np.uint64)
        use = rng.random(n_near) < 0.7 if k else np.ones(n_near, bool)
        src[use] ^= np.uint64(1) << flip[use]
    return np.concatenate([codes, src, codes[: n_near // 3]])  # also exact copies


# ------------------------------------------------------------------------------ hamming


def test_hamming_matches_naive() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, 500, dtype=np.uint64)
    b = rng.integers(0, 2**64, 500, dtype=np.uint64)
    naive = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)]
    assert hamming(a, b).tolist() == naive
    assert _popcount_fallback(a ^ b).tolist() == naive
    assert hamming(np.uint64(2**64 - 1), np.uint64(0)) == 64


def test_int64_roundtrip() -> None:
    vals = [0, 1, 2**63, 2**64 - 1, 12345678901234567890]
    back = to_uint64(to_int64(vals))
    assert [int(v) for v in back] == vals


# ---------------------------------------------------------------------------------- MIH


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(0, 10),
    n=st.integers(0, 300),
    seed=st.integers(0, 2**32 - 1),
    m=st.one_of(st.none(), st.integers(1, 11)),
)
def test_mih_equals_brute_force(t: int, n: int, seed: int, m: int | None) -> None:
    rng = np.random.default_rng(seed)
    codes = _planted(rng, n, n // 2, max_flips=t + 2)
    if m is not None:
        m = min(m, t + 1)
    i, j = mih_pairs(codes, t, m)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_pairs(codes, t)
    assert len(i) == len(set(zip(i.tolist(), j.tolist(), strict=True)))  # no duplicates


def test_mih_pigeonhole_default_is_exact_for_clustered_codes() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**64, 5, dtype=np.uint64)
    codes = _planted(rng, 5, 400, max_flips=8)
    codes = np.concatenate([base, codes])
    for t in (0, 4, 8, 12):
        i, j = mih_pairs(codes, t, m=t + 1)
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_pairs(codes, t)


def test_identical_codes_are_capped_as_star() -> None:
    codes = np.zeros(50, dtype=np.uint64)
    found = find_pairs(codes, 3, max_identical=10)
    assert found.i.size == 0
    assert found.star_i.size == 50 and set(found.star_i.tolist()) == {0}
    uncapped = find_pairs(codes, 3, max_identical=100)
    assert uncapped.i.size == 50 * 49 // 2


# ------------------------------------------------------------------------ union-find etc.


def test_union_find_transitivity() -> None:
    labels = connected_components(7, np.array([5, 0, 3, 2]), np.array([6, 1, 2, 1]))
    assert labels.tolist() == [0, 0, 0, 0, 4, 5, 5]


def _hashes(codes: list[int]) -> dict[str, np.ndarray]:
    arr = np.array(codes, dtype=np.uint64)
    return {"phash": arr, "dhash": arr.copy(), "phash_center": arr.copy()}


def test_chain_is_one_group_with_transitive_members() -> None:
    # a~b (2 bits) and b~c (2 bits) but a, c differ by 4 bits: all in one group at t=2
    table = find_near_duplicates(
        ["a", "b", "c", "d"],
        _hashes([0b0000, 0b0011, 0b1111, 2**64 - 1]),
        thresholds={"phash": 2},
        rule=[("phash",)],
    )
    assert table["image_id"].to_pylist() == ["a", "b", "c"]
    assert table["dup_group_size"].to_pylist() == [3, 3, 3]
    assert table["dup_group_id"].to_pylist() == ["a", "a", "a"]
    assert table["hash_distance_to_canonical"].to_pylist() == [0, 2, 4]


def test_canonical_rule_quality_order() -> None:
    ids = ["x", "y", "z", "w"]
    hashes = _hashes([7, 7, 7, 7])
    quality = {
        "megapixels": [1.0, 2.0, 2.0, 2.0],
        "sharpness_score": [9.0, 1.0, 5.0, 5.0],
        "size_bytes": [10, 10, 20, 20],
    }
    table = find_near_duplicates(ids, hashes, quality=quality)
    canon = table["dup_group_id"].to_pylist()
    assert set(canon) == {"w"}  # mp 2 > 1; sharpness 5 > 1; size tie; id "w" < "z"
    assert table["is_canonical"].to_pylist() == [True, False, False, False]  # sorted: w x y z
    no_quality = find_near_duplicates(ids, hashes)
    assert set(no_quality["dup_group_id"].to_pylist()) == {"w"}
    nan_mp = find_near_duplicates(ids, hashes, quality={"megapixels": [np.nan, 1, 1, 3]})
    assert set(nan_mp["dup_group_id"].to_pylist()) == {"w"}


def test_output_independent_of_input_order() -> None:
    rng = np.random.default_rng(5)
    codes = _planted(rng, 200, 100, max_flips=6)
    ids = [f"img{k:04d}" for k in range(codes.size)]
    hashes = {"phash": codes, "dhash": codes ^ np.uint64(1), "phash_center": codes}
    quality = {"size_bytes": rng.integers(0, 5, codes.size)}
    ref = find_near_duplicates(ids, hashes, quality=quality)
    assert ref.num_rows > 0
    perm = rng.permutation(codes.size)
    shuffled = find_near_duplicates(
        [ids[p] for p in perm],
        {k: v[perm] for k, v in hashes.items()},
        quality={"size_bytes": quality["size_bytes"][perm]},
    )
    assert shuffled.equals(ref)


def test_degenerate_inputs() -> None:
    empty = find_near_duplicates([], _hashes([]))
    assert empty.num_rows == 0 and "dup_group_id" in empty.column_names
    assert find_near_duplicates(["a"], _hashes([5])).num_rows == 0
    same = find_near_duplicates([f"{k}" for k in range(30)], _hashes([0] * 30), max_identical=5)
    assert same.num_rows == 30
    assert set(same["dup_group_size"].to_pylist()) == {30}
    assert same["is_canonical"].to_pylist().count(True) == 1
    with pytest.raises(ValueError):
        find_near_duplicates(["a", "a"], _hashes([1, 2]))
    with pytest.raises(ValueError):
        find_near_duplicates(["a", "b"], _hashes([1, 2]), rule=[("whash",)])


def test_clause_and_requires_all_hashes() -> None:
    hashes = {
        "phash": np.array([0, 1], dtype=np.uint64),
        "dhash": np.array([0, 2**64 - 1], dtype=np.uint64),
    }
    rule = [Clause((("phash", 4), ("dhash", 10)))]
    assert find_near_duplicates(["a", "b"], hashes, rule=rule).num_rows == 0
    either = find_near_duplicates(
        ["a", "b"], hashes, thresholds={"phash": 4, "dhash": 10}, rule=[("phash",), ("dhash",)]
    )
    assert either.num_rows == 2


# -------------------------------------------------------------------------- real photos


def _working(im: Image.Image) -> np.ndarray:
    im = im.convert("RGB")
    im.thumbnail((256, 256))
    return np.asarray(im)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


def _dist(a: dict[str, int], b: dict[str, int], name: str) -> int:
    return bin(a[name] ^ b[name]).count("1")


def test_hashes_of_real_photo_robust_and_discriminative() -> None:
    astro = Image.open(SKI / "astronaut.png")
    ref = compute_hashes(_working(astro))
    assert set(ref) == set(HASH_COLUMNS)
    assert all(0 <= v < 2**64 for v in ref.values())
    small = astro.resize((128, 128), Image.Resampling.LANCZOS)
    for copy in (_working(small), _working(_jpeg(astro, 30)), _working(_jpeg(small, 70))):
        h = compute_hashes(copy)
        assert _dist(ref, h, "phash") <= 4
        assert _dist(ref, h, "dhash") <= 8
    letterbox = Image.new("RGB", (910, 512))
    letterbox.paste(astro.convert("RGB"), (199, 0))
    assert _dist(ref, compute_hashes(_working(letterbox)), "phash") <= 4
    for other in ("coffee.png", "chelsea.png", "camera.png", "rocket.jpg"):
        h = compute_hashes(_working(Image.open(SKI / other)))
        assert _dist(ref, h, "phash") > 16
        assert _dist(ref, h, "phash_center") > 16


def test_hashes_accept_grey_and_tiny_images() -> None:
    grey = np.asarray(Image.open(SKI / "camera.png"))
    assert compute_hashes(grey) == compute_hashes(np.stack([grey] * 3, axis=-1))
    tiny = compute_hashes(np.full((3, 2, 3), 128, dtype=np.uint8))
    assert set(tiny) == set(HASH_COLUMNS)
    with pytest.raises(ValueError):
        compute_hashes(np.zeros((0, 5, 3), dtype=np.uint8))


def test_trim_borders_keeps_low_contrast_images_whole() -> None:
    """A washed-out photo is not a letterbox: trimming must not crop it to a sliver."""
    from exokiratory.passes.sense.hashes import trim_borders

    rng = np.random.default_rng(0)
    content = rng.uniform(0, 255, (170, 256)).astype(np.float32)
    washed = 0.1 * content + 0.9 * 255  # 90 % white: range ~25 grey levels
    assert trim_borders(washed).shape == washed.shape
    boxed = np.zeros((200, 256), np.float32)
    boxed[20:180] = content[:160]
    assert trim_borders(boxed).shape == (160, 256)  # a real letterbox is still removed
