"""Inverted-file (IVF) indices for collections above :data:`.indices.EXACT_MAX` vectors, built in
bounded memory from the stored embeddings.

Kinds (inner product of the stored unit vectors, like the exact index), both with ``nlist``
coarse cells (a power of two near sqrt(n)) searched ``nprobe`` at a time:

* ``ivfsq8`` (the automatic choice from :data:`.indices.IVF_ABOVE` vectors):
  ``IndexIVFScalarQuantizer`` with 8-bit scalar quantisation, ``dim`` bytes per vector (plus
  the 8-byte id): 4 times less memory than the exact float32 index, recall@10 about 0.9;
* ``ivfpq`` (the automatic choice from :data:`.indices.PQ_ABOVE` vectors, where ``ivfsq8``
  would not fit a Colab VM's memory): ``IndexIVFPQ``, product quantisation into ``dim / 8``
  bytes per vector (96 B for 768-d): 30 times less memory than float32, but a lower recall on
  clustered embeddings (measured 0.54 at 20,000 vectors) and a slower build (the PQ training).

Build (:func:`build_ivf`): the quantisers are trained on a seeded sample of at most
:data:`TRAIN_MAX` vectors (``TRAIN_PER_LIST`` per cell), then every vector is added in chunks of
:data:`READ_BATCH` rows. Chunks are read from DuckDB as they come (float16 storage is converted
to float32 one chunk at a time): memory is the index, the training sample and one chunk, never a
float32 copy of every embedding. Recall@10 and memory per vector: ``bench/index_scale.py`` and
``bench/RESULTS.md``.

On a cluster (``imap``, ``index build --engine ray``): training stays on the driver; the rows
are cut into shards of :data:`SHARD_ROWS` in stream order, each added by a Ray task to an empty
copy of the trained index (``faiss.serialize_index`` bytes both ways) and merged back in shard
order (:func:`add_sharded`): the same index, to the byte, as the local build. When the rows
come from the embedding parts (a :class:`ShardReader`, ``reader`` of :func:`build_ivf`), the
shards are descriptors of row groups and each task reads its own rows from the workspace
storage (:func:`add_read`; the training sample too, :func:`read_ids`): the driver reads no
vector, and the index is the same bytes (the tasks' chunks are the local stream's chunks, added
in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

IVF_KINDS = ("ivfpq", "ivfsq8")
TRAIN_PER_LIST = 64
"""Training vectors per coarse cell (the sample holds ``TRAIN_PER_LIST * nlist``, at most
:data:`TRAIN_MAX`)."""
TRAIN_MAX = 131_072
"""Largest training sample (131,072 x 768 float32 = 400 MB)."""
TRAIN_SEED = 0
READ_BATCH = 50_000
"""Rows per chunk read from the stored embeddings (50,000 x 768 float32 = 150 MB)."""
NPROBE = 64
"""Cells searched per query (stored in the index)."""
PQ_BYTES_PER_DIMS = 8
"""Dimensions per PQ byte (``m = dim / 8`` sub-quantisers of 8 bits)."""

Chunk = tuple[np.ndarray, np.ndarray]
"""(ids int64, vectors float32 (rows, dim))."""
SHARD_ROWS = 1_000_000
"""Vectors added by one shard (one Ray task) of :func:`add_sharded`."""
ShardMap = Callable[[Callable[..., Any], Iterable[Any], tuple[Any, ...]], Iterator[Any]]
"""``fn(item, *shared)`` for each item, results in item order: in this process or as Ray tasks
(:func:`exokiratory.engine.shards.imap_shards`; the search layer does not import the engine)."""


class ShardReader(Protocol):
    """Stored rows that shard tasks read themselves (e.g. :class:`.indices.PartReader`): the
    driver cuts small descriptors (:meth:`shards`), each task reads the rows of its descriptor
    from storage (:meth:`read`). A reader is shared once with every task (``imap``'s
    ``shared``), so it must pickle and stay small beside the rows."""

    def shards(self, rows: int) -> list[Any]:
        """Descriptors of at least ``rows`` stored rows each (the last one smaller), in the
        order of the driver's stream (:func:`.indices.stream_chunks`)."""
        ...

    def read(self, shard: Any) -> Iterator[Chunk]:
        """The (ids, float32 vectors) chunks of one descriptor: the chunks the driver's stream
        gives for those rows, in its order."""
        ...


def ivf_params(n: int, dim: int, kind: str) -> dict[str, int]:
    """``nlist`` (a power of two near sqrt(n)), ``train_size``, ``nprobe`` and the PQ ``m``."""
    if kind not in IVF_KINDS:
        raise ValueError(f"unknown IVF kind {kind!r}; use one of {', '.join(IVF_KINDS)}")
    nlist = 2 ** max(0, round(math.log2(max(1.0, math.sqrt(n)))))
    nlist = max(1, min(nlist, n // TRAIN_PER_LIST or 1))
    params = {
        "nlist": nlist,
        "train_size": min(n, max(TRAIN_PER_LIST * nlist, 10_000), TRAIN_MAX),
        "nprobe": min(NPROBE, nlist),
        "seed": TRAIN_SEED,
    }
    if kind == "ivfpq":
        m = max(1, dim // PQ_BYTES_PER_DIMS)
        while dim % m:
            m -= 1
        params["m"] = m
        params["nbits"] = 8 if params["train_size"] >= 256 * 39 else 4
    return params


def new_ivf(kind: str, dim: int, params: dict[str, int]) -> Any:
    """An untrained IVF index (inner product)."""
    import faiss

    quantizer: Any = faiss.IndexFlatIP(dim)  # kept alive by the index's wrapper
    metric = faiss.METRIC_INNER_PRODUCT
    index: Any
    if kind == "ivfpq":
        nlist, m, nbits = params["nlist"], params["m"], params["nbits"]
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, metric)
        index.do_polysemous_training = False  # minutes of training for an unused feature
    else:
        qtype = faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, params["nlist"], qtype, metric)
    index.nprobe = params["nprobe"]
    index.cp.seed = params["seed"]
    return index


def sample_ids(ids: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` of ``ids`` (sorted), all of them when fewer."""
    if size >= ids.size:
        return np.sort(ids)
    rng = np.random.default_rng(seed)
    return np.sort(ids[rng.choice(ids.size, size, replace=False)])


def gather_sample(chunks: Iterable[Chunk], wanted: np.ndarray, dim: int) -> np.ndarray:
    """The vectors of ``wanted`` ids (in id order) from a pass over the chunks."""
    out = np.empty((wanted.size, dim), dtype=np.float32)
    seen = np.zeros(wanted.size, dtype=bool)
    for ids, vectors in only_ids(chunks, wanted):
        pos = np.searchsorted(wanted, ids)
        out[pos] = vectors
        seen[pos] = True
    if not seen.all():
        raise RuntimeError("the embeddings changed while the index was built: build it again")
    return out


# -- chunk helpers shared by the readers of stored vectors (indices, clustering, spill) ---

CHANGED = "the embeddings changed while they were read: run it again"


def only_ids(chunks: Iterable[Chunk], wanted: np.ndarray) -> Iterator[Chunk]:
    """The rows of each chunk whose id is in the sorted ``wanted`` (empty chunks left out)."""
    for ids, vectors in chunks:
        pos = np.minimum(np.searchsorted(wanted, ids), max(wanted.size - 1, 0))
        hit = wanted[pos] == ids if wanted.size else np.zeros(ids.size, bool)
        if hit.all():
            yield ids, vectors
        elif hit.any():
            yield ids[hit], vectors[hit]


def positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where each of ``ids`` is in ``sorted_ids``.

    Raises:
        RuntimeError: (:data:`CHANGED`) when one of them is not there."""
    pos = np.searchsorted(sorted_ids, ids)
    if (pos >= sorted_ids.size).any() or not np.array_equal(sorted_ids[pos], ids):
        raise RuntimeError(CHANGED)
    return pos


def exact_half(vectors: np.ndarray) -> np.ndarray | None:
    """``vectors`` as float16 when that loses nothing (float16 storage, which DuckDB reads back
    as float32), else None."""
    half = vectors.astype(np.float16)
    return half if np.array_equal(half.astype(vectors.dtype), vectors, equal_nan=True) else None


def build_ivf(
    kind: str,
    all_ids: np.ndarray,
    dim: int,
    chunks: Callable[[], Iterator[Chunk]],
    index: Any | None = None,
    known: np.ndarray | None = None,
    imap: ShardMap | None = None,
    reader: ShardReader | None = None,
) -> tuple[Any, dict[str, int], int]:
    """(index, params, vectors added): train a new index on a seeded sample (unless ``index``
    is given) and add every chunk's vectors whose id is not in ``known``. ``chunks()`` starts a
    new pass over the stored vectors (it is called once or twice). ``imap``: add the vectors as
    shards run by it (:func:`add_sharded`; the very same index); with ``reader`` too, the
    tasks read their rows themselves (the sample by :func:`read_ids`, the add by
    :func:`add_read_sharded`) and ``chunks`` is not called."""
    params = ivf_params(all_ids.size, dim, kind)
    if index is None:
        index = new_ivf(kind, dim, params)
        wanted = sample_ids(np.asarray(all_ids, np.int64), params["train_size"], params["seed"])
        if imap is not None and reader is not None:
            index.train(gather_sample(read_ids(reader, wanted, imap), wanted, dim))
        else:
            index.train(gather_sample(chunks(), wanted, dim))
    added = 0
    known_sorted = np.sort(known) if known is not None else np.zeros(0, np.int64)
    if imap is not None and reader is not None:
        return index, params, add_read_sharded(index, reader, imap, known_sorted)
    if imap is not None:
        return index, params, add_sharded(index, new_rows(chunks(), known_sorted), imap)
    for ids, vectors in chunks():
        new = ~np.isin(ids, known_sorted, assume_unique=False)
        if new.any():
            index.add_with_ids(np.ascontiguousarray(vectors[new]), ids[new])
            added += int(new.sum())
    return index, params, added


def new_rows(chunks: Iterable[Chunk], known_sorted: np.ndarray) -> Iterator[Chunk]:
    """The rows of each chunk whose id is not in ``known_sorted`` (empty chunks left out)."""
    for ids, vectors in chunks:
        new = ~np.isin(ids, known_sorted)
        if new.all():
            yield ids, vectors
        elif new.any():
            yield ids[new], vectors[new]


def shard_chunks(chunks: Iterable[Chunk], rows: int) -> Iterator[Chunk]:
    """Consecutive chunks joined into shards of at least ``rows`` rows (the last one smaller),
    in order."""
    held: list[Chunk] = []
    n = 0
    for chunk in chunks:
        held.append(chunk)
        n += len(chunk[0])
        if n >= rows:
            yield _join(held)
            held, n = [], 0
    if held:
        yield _join(held)


def _join(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def add_shard(shard: Chunk, empty: np.ndarray) -> np.ndarray:
    """A shard's task: the trained empty index ``empty`` (``faiss.serialize_index`` bytes)
    with the shard's vectors added, serialised."""
    import faiss

    index = faiss.deserialize_index(empty)
    ids, vectors = shard
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, np.int64))
    return np.asarray(faiss.serialize_index(index))


def add_sharded(
    index: Any, chunks: Iterable[Chunk], imap: ShardMap, rows: int | None = None
) -> int:
    """Add the chunks' vectors to the trained ``index`` as shards of ``rows`` (default
    :data:`SHARD_ROWS`) rows, each added
    by ``imap`` (in this process or a Ray task) to an empty copy of the index, merged back in
    shard order (``merge_from`` appends every inverted list): the same index, to the byte, as
    adding the chunks here one after another. Returns the vectors added."""
    shards = shard_chunks(chunks, rows or SHARD_ROWS)
    return _merge_in_order(index, imap(add_shard, shards, (_empty_blob(index),)))


def _empty_blob(index: Any) -> np.ndarray:
    """The trained ``index`` without its vectors, serialised (what every add task starts
    from)."""
    import faiss

    if index.ntotal:  # an incremental build: the copy keeps the training, not the vectors
        empty = faiss.clone_index(index)
        empty.reset()
    else:
        empty = index
    return np.asarray(faiss.serialize_index(empty))


def _merge_in_order(index: Any, outputs: Iterable[np.ndarray]) -> int:
    """Merge the serialised shard indices into ``index`` in their order (``merge_from``
    appends every inverted list); returns the vectors added."""
    import faiss

    added = 0
    for out in outputs:
        part = faiss.deserialize_index(out)
        added += int(part.ntotal)
        index.merge_from(part, 0)
    return added


def add_read(
    shard: Any, empty: np.ndarray, reader: ShardReader, known_sorted: np.ndarray
) -> np.ndarray:
    """A task of :func:`add_read_sharded`: the trained empty index ``empty`` with the vectors
    of the descriptor ``shard`` (read from storage here, chunk by chunk, in stream order; ids in
    ``known_sorted`` left out) added, serialised."""
    import faiss

    index = faiss.deserialize_index(empty)
    for ids, vectors in new_rows(reader.read(shard), known_sorted):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return np.asarray(faiss.serialize_index(index))


def add_read_sharded(
    index: Any,
    reader: ShardReader,
    imap: ShardMap,
    known_sorted: np.ndarray | None = None,
    rows: int | None = None,
) -> int:
    """:func:`add_sharded` with shards that the tasks read themselves: descriptors of about
    ``rows`` (default :data:`SHARD_ROWS`) stored rows, in stream order, each added by a task
    (:func:`add_read`) to an empty copy of ``index`` and merged back in descriptor order. The
    tasks add the chunks of the driver's stream, in its order, so the index is the same bytes;
    the driver reads no vector. Returns the vectors added."""
    known = np.zeros(0, np.int64) if known_sorted is None else known_sorted
    shards = reader.shards(rows or SHARD_ROWS)
    return _merge_in_order(index, imap(add_read, shards, (_empty_blob(index), reader, known)))


def read_wanted(shard: Any, reader: ShardReader, wanted: np.ndarray) -> Chunk:
    """A task of :func:`read_ids`: the rows of the descriptor ``shard`` whose id is in the
    sorted ``wanted`` (float16 when exact: half the bytes back), possibly none."""
    got = list(only_ids(reader.read(shard), wanted))
    if not got:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids, vectors = _join(got)
    half = exact_half(vectors)
    return ids, vectors if half is None else half


def read_ids(reader: ShardReader, wanted: np.ndarray, imap: ShardMap) -> Iterator[Chunk]:
    """The stored rows of the sorted ``wanted`` ids as chunks, read by ``imap`` tasks (one
    per descriptor of :data:`READ_BATCH` rows, :func:`read_wanted`): a training sample without
    the driver reading the other rows. Chunks hold float16 vectors when that is exact
    (:func:`.indices.fill_matrix` and :func:`gather_sample` place them by id)."""
    for ids, vectors in imap(read_wanted, reader.shards(READ_BATCH), (reader, wanted)):
        if ids.size:
            yield ids, vectors


def arrow_chunks(reader: Iterable[pa.RecordBatch], id_col: str) -> Iterator[Chunk]:
    """(ids, float32 vectors) of each record batch with ``id_col`` and ``embedding``."""
    for batch in reader:
        if batch.num_rows == 0:
            continue
        emb = batch.column(batch.schema.get_field_index("embedding"))
        flat = emb.flatten().to_numpy(zero_copy_only=False)
        vectors = np.ascontiguousarray(flat.reshape(batch.num_rows, -1), dtype=np.float32)
        ids = batch.column(batch.schema.get_field_index(id_col)).to_numpy(zero_copy_only=False)
        yield np.asarray(ids, dtype=np.int64), vectors
