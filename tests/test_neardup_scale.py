"""The scalable near-duplicate search (pigeonhole blocks, FAISS or numpy kernel) returns exactly
the pairs of brute force and of the old multi-index hashing; no threshold is capped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exokiratory.engine.flag_rules import FlagFrame
from exokiratory.engine.shards import shard_engine
from exokiratory.passes.flags import hamming_search as hs
from exokiratory.passes.flags import neardup
from exokiratory.passes.flags.flag_rules import near_duplicate_columns, near_duplicates
from exokiratory.passes.flags.table import FlagsParams
from exokiratory.passes.sense.hashes import hamming

ENGINES = ["numpy", *(["faiss"] if hs.have_faiss() else [])]


def _brute(codes: np.ndarray, t: int) -> set[tuple[int, int]]:
    i, j = np.nonzero(np.triu(hamming(codes[:, None], codes[None, :]) <= t, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def _planted(seed: int, n: int, flips: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    near = codes[rng.integers(0, max(n, 1), n // 2)] if n else codes[:0]
    for _ in range(flips):
        near = near ^ (np.uint64(1) << rng.integers(0, 64, near.size).astype(np.uint64))
    return np.concatenate([codes, near, codes[: n // 5]])


@pytest.mark.parametrize("engine", ENGINES)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(t=st.integers(0, 16), n=st.integers(0, 250), seed=st.integers(0, 2**32 - 1))
def test_blocks_equal_brute_force(
    engine: str, t: int, n: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hs, "BRUTE_FORCE_N", 0)  # the substring path even for tiny inputs
    monkeypatch.setattr(hs, "BLOCK_COMPARES", 97)  # many query blocks per kernel call
    codes = _planted(seed, n, flips=t // 2 + 1)
    i, j = hs.hamming_pairs(codes, t, engine=engine)  # type: ignore[arg-type]
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute(codes, t)
    assert i.size == len(set(zip(i.tolist(), j.tolist(), strict=True)))
    assert np.all(i < j) and np.all(np.diff(i) >= 0)


@pytest.mark.parametrize("t", [0, 4, 8, 12, 16])
def test_same_pairs_and_order_as_mih(t: int) -> None:
    codes = _planted(3, 6000, flips=t // 2 + 1)
    new = hs.hamming_pairs(codes, t)
    old = neardup.mih_pairs(codes, t)
    assert np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])


def test_plans_follow_the_pigeonhole() -> None:
    assert hs.substring_radii(12, 4) == [3, 2, 2, 2]
    assert hs.substring_radii(2, 4) == [0, 0, 0, -1]
    for n, t in [(10**4, 4), (10**5, 12), (10**6, 12), (10**6, 8), (10**7, 12)]:
        plan = hs.plan_substrings(n, t)
        assert sum(s.radius + 1 for s in plan) >= t + 1
        assert sum(s.width for s in plan) <= 64
        assert all(s.width <= hs.MAX_KEY_BITS for s in plan)


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_partition_the_result(workers: int) -> None:
    codes = _planted(5, 5000, flips=5)
    plan, shards = hs.plan_shards(codes.size, 10, keys_per_shard=7)
    assert len(shards) > 1
    parts = [hs.run_shard(codes, 10, plan, s, workers=workers) for s in shards]
    i, j = hs.sort_pairs(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    )
    ref = hs.hamming_pairs(codes, 10)
    assert np.array_equal(i, ref[0]) and np.array_equal(j, ref[1])


def test_groups_identical_to_the_old_search(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    phash = _planted(0, 3000, flips=6)  # with near and exact copies
    n = phash.size
    hashes = {"phash": phash, "dhash": phash ^ np.uint64(5), "phash_center": phash}
    ids = [f"i{k:05d}" for k in range(n)]
    quality = {"size_bytes": rng.integers(0, 9, n)}
    new = neardup.find_near_duplicates(ids, hashes, quality=quality)

    def old_search(c, t, engine="auto", transform=None):  # type: ignore[no-untyped-def]
        return transform(*neardup.mih_pairs(c, t))  # the whole search, then the expansion

    monkeypatch.setattr(neardup, "hamming_pairs", old_search)
    old = neardup.find_near_duplicates(ids, hashes, quality=quality)
    assert new.num_rows > 1000 and new.equals(old)


def _frame(n: int, seed: int = 0) -> FlagFrame:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64)
    base[1] = base[0] ^ np.uint64(0b1111111111)  # 10 bits: over the old cap of 8
    cols = {h: pa.array(base, pa.uint64()) for h in ("phash", "dhash", "phash_center")}
    t = pa.table(
        {
            "image_id": [f"x{k:04d}" for k in range(n)],
            **cols,
            "text_likeness_score": np.zeros(n),
            "noise_score": np.full(n, 5.0),
            "megapixels": np.arange(n, dtype=np.float64),
            "sharpness_score": np.ones(n),
            "size_bytes": np.ones(n),
        }
    )
    return FlagFrame(t, np.ones(n, dtype=bool))


def test_no_cap_by_default_and_columns_aligned() -> None:
    p = FlagsParams()
    assert p.near_duplicate_large_n is None  # type: ignore[attr-defined]
    frame = _frame(300)
    assert near_duplicates(frame.table, frame.sensed, p).num_rows == 2  # type: ignore[arg-type]
    cols = near_duplicate_columns(frame, p)  # type: ignore[arg-type]
    assert cols["dup_group_id"].to_pylist()[:3] == ["x0001", "x0001", None]
    assert cols["is_dup_canonical"].to_pylist()[:3] == [False, True, None]
    assert cols["dup_group_size"].to_pylist()[:2] == [2, 2]
    assert cols["hash_distance_to_canonical"].to_pylist()[:2] == [10, 0]
    assert cols["is_near_duplicate"].tolist()[:3] == [True, False, False]
    assert int(np.sum(cols["is_near_duplicate"])) == 1


def test_opt_in_cap_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    frame = _frame(50)
    capped = FlagsParams(near_duplicate_large_n=10)
    with caplog.at_level("WARNING"):
        assert near_duplicates(frame.table, frame.sensed, capped).num_rows == 0  # type: ignore[arg-type]
    assert "capping hash thresholds at 8" in caplog.text


@pytest.mark.ray
@pytest.mark.slow
def test_ray_shards_give_the_same_pairs() -> None:
    ray = pytest.importorskip("ray")
    codes = _planted(9, 20_000, flips=6)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(4)
    hashes = {
        "phash": codes,
        "dhash": codes ^ rng.integers(0, 2**20, codes.size, dtype=np.uint64),  # some too far
        "phash_center": codes,
    }
    try:
        i, j = hs.hamming_pairs_ray(codes, 12, keys_per_shard=4)
        with shard_engine("ray"):  # the dHash check runs inside the shard tasks
            on_ray = neardup.rule_pairs(hashes, neardup.DEFAULT_RULE)
    finally:
        ray.shutdown()
    ref = hs.hamming_pairs(codes, 12)
    assert i.size > 1000 and np.array_equal(i, ref[0]) and np.array_equal(j, ref[1])
    local = neardup.rule_pairs(hashes, neardup.DEFAULT_RULE)
    assert _pair_set(*on_ray) == _pair_set(*local)
    # the verified edges are exactly the candidates that meet each clause's other hash
    cand = _pair_set(*ref)
    dh = hamming(hashes["dhash"][ref[0]], hashes["dhash"][ref[1]])
    first = _pair_set(ref[0][dh <= 16], ref[1][dh <= 16])
    assert first <= _pair_set(*local) and len(first) < len(cand)


def _pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist(), strict=True))
