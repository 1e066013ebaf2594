"""Shard work of derivations (engine/shards.py): the local engine, the sharded near-duplicate
search and the sharded IVF build give the results of the unsharded code; Ray (in-process, one
CPU) gives the same, in item order, with one-line failures."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import pairwise

import numpy as np
import pytest

from exokiratory.engine.shards import (
    ShardEngine,
    ShardError,
    current_engine,
    imap_shards,
    map_shards,
    parallelism,
    shard_engine,
)
from exokiratory.passes.flags import hamming_search as hs


def _scaled(item: int, factor: np.ndarray, offset: int = 0) -> int:
    return int(item * factor.sum()) + offset


def _fails_on_three(item: int) -> int:
    if item == 3:
        raise ValueError("three is bad\nsecond line")
    return item


def _planted(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    near = codes[: n // 5].copy()
    for _ in range(5):
        near ^= np.uint64(1) << rng.integers(0, 64, near.size).astype(np.uint64)
    return np.concatenate([codes, near, codes[:7]])


# ------------------------------------------------------------------------------ engine


def test_engine_context_and_names() -> None:
    assert current_engine() == ShardEngine("local")
    with shard_engine("ray", "10.0.0.1:6379") as e:
        assert current_engine() == e == ShardEngine("ray", "10.0.0.1:6379")
        with shard_engine("local"):
            assert current_engine().name == "local"
        assert current_engine().name == "ray"
    assert current_engine().name == "local" and parallelism() == 1
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        ShardEngine.named("dask")


def test_local_map_in_order_with_shared_inputs() -> None:
    shared = (np.ones(3), 1)
    assert map_shards(_scaled, range(5), shared) == [1, 4, 7, 10, 13]
    lazy = imap_shards(_scaled, iter(range(3)), shared)
    assert isinstance(lazy, Iterator) and list(lazy) == [1, 4, 7]


def test_local_failure_is_one_line() -> None:
    with pytest.raises(ShardError) as err:
        map_shards(_fails_on_three, range(5), desc="toy")
    assert str(err.value) == "toy: shard 3 failed: ValueError: second line"


# ------------------------------------------------------------------------- near duplicates


@pytest.mark.parametrize(("n", "t"), [(300, 12), (3000, 12), (3000, 4)])
def test_sharded_pairs_equal_threaded(n: int, t: int) -> None:
    codes = _planted(n)
    ref = hs.hamming_pairs(codes, t)
    i, j = hs._pairs_on_shards(codes, t, "auto", keys_per_shard=64)  # many shards
    assert ref[0].size > n // 50
    assert np.array_equal(i, ref[0]) and np.array_equal(j, ref[1])


def test_plan_shards_cut_enough_and_partition() -> None:
    _, brute = hs.plan_shards(100, 12, min_shards=8)
    assert len(brute) == 8 and brute[0] == hs.Shard(-1, 0, 13) and brute[-1].hi == 100
    plan, shards = hs.plan_shards(50_000, 12, min_shards=4)
    for index, sub in enumerate(plan):
        mine = [s for s in shards if s.index == index]
        assert len(mine) >= 4 and mine[0].lo == 0 and mine[-1].hi == 1 << sub.width
        assert all(a.hi == b.lo for a, b in pairwise(mine))


# -------------------------------------------------------------------------------- IVF


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    x = centres[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _chunks(x: np.ndarray, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for lo in range(0, len(x), rows):
        yield np.arange(lo, lo + len(x[lo : lo + rows]), dtype=np.int64), x[lo : lo + rows]


@pytest.mark.parametrize("kind", ["ivfsq8", "ivfpq"])
def test_sharded_ivf_is_the_same_index(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    faiss = pytest.importorskip("faiss")
    from exokiratory.search import ivf

    monkeypatch.setattr(ivf, "SHARD_ROWS", 450)
    x = _clustered(2000, 32)
    ids = np.arange(2000)
    local, _, n1 = ivf.build_ivf(kind, ids, 32, lambda: _chunks(x, 200))
    shard_calls: list[int] = []

    def counting(fn, items, shared):  # type: ignore[no-untyped-def]
        for out in imap_shards(fn, items, shared):
            shard_calls.append(1)
            yield out

    sharded, _, n2 = ivf.build_ivf(kind, ids, 32, lambda: _chunks(x, 200), imap=counting)
    assert n1 == n2 == sharded.ntotal == 2000 and len(shard_calls) == 4  # 600+600+600+200
    assert np.array_equal(faiss.serialize_index(local), faiss.serialize_index(sharded))
    # incremental: the shards copy the trained index without its vectors
    first, _, _ = ivf.build_ivf(kind, ids[:1500], 32, lambda: _chunks(x[:1500], 200))
    more, _, n3 = ivf.build_ivf(
        kind, ids, 32, lambda: _chunks(x, 200), first, ids[:1500], imap=imap_shards
    )
    whole, _, _ = ivf.build_ivf(kind, ids[:1500], 32, lambda: _chunks(x, 200))
    assert n3 == 500 and np.array_equal(faiss.serialize_index(more), faiss.serialize_index(whole))


def test_shard_chunks_keep_order() -> None:
    from exokiratory.search import ivf

    x = _clustered(10, 4)
    shards = list(ivf.shard_chunks(_chunks(x, 3), rows=5))
    assert [s[0].tolist() for s in shards] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert np.array_equal(np.concatenate([s[1] for s in shards]), x)


# -------------------------------------------------------------------------------- Ray


@pytest.mark.ray
@pytest.mark.slow
def test_ray_map_in_order_and_failures() -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with shard_engine("ray"):
            assert parallelism() == 1
            assert map_shards(_scaled, range(6), (np.ones(2),)) == [0, 2, 4, 6, 8, 10]
            with pytest.raises(ShardError, match=r"^toy: shard 3 failed: ValueError: second line$"):
                map_shards(_fails_on_three, range(5), desc="toy")
            codes = _planted(3000, seed=2)
            i, j = hs.hamming_pairs(codes, 12)  # the shard engine routes it to Ray
            faiss = pytest.importorskip("faiss")
            from exokiratory.search import ivf

            x = _clustered(1200, 16)
            build = partial(ivf.build_ivf, "ivfsq8", np.arange(1200), 16)
            on_ray, _, _ = build(lambda: _chunks(x, 256), imap=imap_shards)
            from exokiratory.search import clustering as cl

            y = _clustered(3000, 16)
            cents = cl.two_level_kmeans(y, 64, seed=3).centroids
            assign = partial(cl.assign_to_centroids, y, cents, 256)
            on_ray_assign = assign(imap=imap_shards)  # 3000 rows: 1 shard of 16 batches
            on_ray_small = cl.assign_to_centroids(y, cents, 64, imap=imap_shards)  # 3 shards
            hier = cl.fit_hierarchy(y, [64, 8], two_level_min_k=16)
            stream = partial(cl.stream_hierarchy, ids=np.arange(3000), hier=hier)
            on_ray_stream = stream(_chunks(y, 256), imap=imap_shards)  # 12 chunks as tasks
        ref = hs.hamming_pairs(codes, 12)
        assert np.array_equal(i, ref[0]) and np.array_equal(j, ref[1])
        for got in (on_ray_assign, on_ray_small):  # cluster assignment: the same labels
            local_assign = assign()
            assert np.array_equal(got[0], local_assign[0])
            assert np.array_equal(got[1], local_assign[1])
        local_stream = stream(_chunks(y, 256))
        assert all(np.array_equal(a, b) for a, b in zip(on_ray_stream, local_stream, strict=True))
        local, _, _ = build(lambda: _chunks(x, 256))
        assert np.array_equal(faiss.serialize_index(on_ray), faiss.serialize_index(local))
    finally:
        ray.shutdown()
