"""FAISS similarity indices over stored embeddings: ``indices/<space>.faiss`` with its id map
(``<space>.ids.parquet``: position -> image_idx, image_id) and build metadata
(``<space>.json``).

Index choice by size (cosine similarity = inner product of the stored unit vectors):

* up to :data:`EXACT_MAX` (10^6) vectors: ``IndexFlatIP``, exact. Measured on 2 cores
  (``bench/index_recall.py``): 10^5 x 512-d, 0.43 ms per query (batched), build 0.1 s;
* from ``ivf_above`` vectors (:data:`IVF_ABOVE`, 10^6, a keyword of :func:`build_index`):
  ``ivfsq8``, an inverted file with 8-bit scalar quantisation, trained on a seeded sample and
  filled in chunks read from the stored embeddings (:mod:`.ivf`; bounded memory, ~800 bytes
  per 768-d vector instead of 3 KB), and from :data:`PQ_ABOVE` (4 x 10^6) ``ivfpq`` (product
  quantisation, ~100 bytes per 768-d vector, lower recall); recall@10 and memory per vector in
  ``bench/RESULTS.md`` (``bench/index_scale.py``);
* ``hnsw`` on request (or from :data:`EXACT_MAX` when ``ivf_above=None``): ``IndexHNSWFlat``
  (M = 32, efConstruction = 200, efSearch = 128, inner product), approximate. On unstructured random vectors (its worst case) it reached only recall@10 0.42
  at 10^5 and took 120 s to build, which is why exact search is used that far; its recall on
  real, clustered embeddings is not measured yet.

Segment indices (``indices/segments-<space>.*``, built with ``segments=True`` from
``segment_embeddings_<space>``) key each segment by the int64 :func:`segment_int_id`
``image_idx << 20 | mask_index`` (stable: both parts are frozen), and their id map holds
``id, segment_id, image_id, image_idx``.

Builds are incremental: when the stored index holds a subset of the current embeddings with the
same kind and model, only the new vectors are added. Files are written atomically (the id map and
metadata after the index; a reader checks that their counts agree).

On a Ray cluster (``imap``), the IVF add and the clusters' assignment read no vector on the
driver when the image embeddings are read from their parts (:class:`RawParts`): the driver cuts
descriptors of row groups (:class:`PartReader`) and each task opens its parts through the
workspace storage's fsspec file system (a bucket every node reads, or a local path), keeping the
rows the view keeps. Segment embeddings, and image embeddings the view must combine (mixed
folders), still stream through the driver (:func:`stream_chunks`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from exokiratory.core.catalog import Catalog
from exokiratory.core.dataset import ORIGIN, is_compacted, keep_one_sql
from exokiratory.core.storage import Storage
from exokiratory.search.ivf import (
    CHANGED,
    IVF_KINDS,
    READ_BATCH,
    Chunk,
    ShardMap,
    arrow_chunks,
    build_ivf,
    exact_half,
    only_ids,
    positions,
)

log = logging.getLogger(__name__)

EXACT_MAX = 1_000_000
IVF_ABOVE = 1_000_000
"""``auto`` builds an IVF index (``ivfsq8``) from this many vectors (``build_index(ivf_above=)``)."""
PQ_ABOVE = 4_000_000
"""``auto`` builds ``ivfpq`` from this many vectors (``ivfsq8`` would take > 3 GB at 768-d)."""
KINDS = ("auto", "flat", "hnsw", *IVF_KINDS)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
SPACES = ("clip", "dino")
SEGMENT_ID_BITS = 20
"""Low bits of a segment's int64 index id that hold its ``mask_index`` (< 2^20 per image)."""
ADD_BATCH = 65_536
"""Rows converted to float32 and added to a flat or HNSW index at a time."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError("indices need FAISS: pip install 'exokiratory[ml]' (faiss-cpu)") from exc
    return faiss


@dataclass
class IndexReport:
    space: str
    kind: str
    total: int
    added: int
    seconds: float

    def summary(self) -> str:
        return (
            f"index {self.space}: {self.kind}, {self.total} vectors ({self.added} added); "
            f"{self.seconds:.1f}s"
        )


def _paths(space: str, segments: bool = False) -> tuple[str, str, str]:
    stem = f"indices/segments-{space}" if segments else f"indices/{space}"
    return f"{stem}.faiss", f"{stem}.ids.parquet", f"{stem}.json"


def segment_int_id(image_idx: np.ndarray, mask_index: np.ndarray) -> np.ndarray:
    """The int64 index id of segments: ``image_idx << 20 | mask_index``."""
    mask_index = np.asarray(mask_index, np.int64)
    if len(mask_index) and (mask_index.min() < 0 or mask_index.max() >= 1 << SEGMENT_ID_BITS):
        raise ValueError(f"mask_index must be in [0, 2^{SEGMENT_ID_BITS}) for segment indices")
    return (np.asarray(image_idx, np.int64) << SEGMENT_ID_BITS) | mask_index


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A (fixed-size) list column of embeddings as a contiguous float32 ``(n, dim)`` array
    (``n`` >= 1)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return np.ascontiguousarray(flat.reshape(len(arr), -1))


def single_model(t: pa.Table, view: str) -> str:
    """The one ``model_id`` of the rows of ``t`` (read from ``view``); mixed models raise."""
    models = set(t.column("model_id").to_pylist())
    if len(models) != 1:
        raise ValueError(f"{view} mixes models {sorted(models)}; use one model per space")
    return models.pop()


def _stored_vectors(
    cat: Catalog, space: str, segments: bool
) -> tuple[np.ndarray, pa.Table, str, str]:
    """(vectors, id map rows, id column, model_id) of the error-free stored embeddings of
    ``space``, in key order. The vectors are read in record batches (:func:`stream_chunks`)
    into one preallocated array, float16 when the stored values are float16 (the default
    storage: ``n x d x 2`` bytes, 1.5 GB at 10^6 x 768), else float32; never a whole float32
    copy of float16 storage (:func:`fill_matrix`)."""
    keys, id_col, model_id, dim = _stored_keys(cat, space, segments)
    ids = keys.column(id_col).to_numpy()
    vectors = fill_matrix(stream_chunks(cat, space, segments)(), ids, dim)
    return vectors, keys, id_col, model_id


def fill_matrix(chunks: Iterable[Chunk], ids: np.ndarray, dim: int | None = None) -> np.ndarray:
    """The vectors of the chunks placed at the positions of their ids in the sorted ``ids``.
    float16 while every value is exactly a float16 (DuckDB returns float16 Parquet as float32,
    so the cast back is lossless), else float32 from the first chunk that is not. ``dim``:
    the vector size (None: taken from the first chunk).

    Raises:
        RuntimeError: when the chunks do not hold each of ``ids`` exactly once (the embeddings
            changed while they were read)."""
    out = None if dim is None else np.empty((ids.size, dim), np.float16)
    seen = 0
    for chunk_ids, vectors in chunks:
        pos = positions(ids, chunk_ids)
        if out is None:
            out = np.empty((ids.size, vectors.shape[1]), np.float16)
        half = exact_half(vectors) if out.dtype == np.float16 else None
        if out.dtype == np.float16 and half is None:
            log.info("stored embeddings are not float16: reading them as float32")
            out = out.astype(np.float32)
        out[pos] = vectors if half is None else half
        seen += len(pos)
    if seen != ids.size:
        raise RuntimeError(CHANGED)
    return out if out is not None else np.empty((0, 0), np.float16)


def load_segment_embeddings(cat: Catalog, space: str) -> tuple[np.ndarray, pa.Table, str]:
    """(vectors float32, id map rows ``id, segment_id, image_id, image_idx``, model_id) of the
    stored segment embeddings of ``space``."""
    vectors, keys, _, model_id = _stored_vectors(cat, space, True)
    return vectors.astype(np.float32), keys, model_id


def load_embeddings(cat: Catalog, space: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(vectors float32, image_idx int64, image_id, model_id) of the stored embeddings (for
    bounded memory: :func:`load_embeddings_f16`)."""
    vectors, idx, ids, model_id = load_embeddings_f16(cat, space)
    return vectors.astype(np.float32), idx, ids.to_pylist(), model_id


def load_embeddings_f16(cat: Catalog, space: str) -> tuple[np.ndarray, np.ndarray, pa.Array, str]:
    """(vectors as stored: float16, or float32 for float32 storage; image_idx int64, image_id,
    model_id) of the stored embeddings, in image_idx order, read in record batches: convert
    to float32 batch by batch (e.g. :func:`.clustering.unit_rows`)."""
    vectors, keys, _, model_id = _stored_vectors(cat, space, False)
    ids = keys.column("image_id").combine_chunks()
    return vectors, keys.column("image_idx").to_numpy(), ids, model_id


def image_keys(cat: Catalog, space: str) -> tuple[np.ndarray, pa.Array, str, int]:
    """(image_idx int64 sorted, image_id, model_id, dim) of the error-free stored embeddings
    of ``space``, key columns only (no vector is read)."""
    keys, _, model_id, dim = _stored_keys(cat, space, False)
    return (
        keys.column("image_idx").to_numpy(),
        keys.column("image_id").combine_chunks(),
        model_id,
        dim,
    )


def gather_rows(chunks: Iterable[Chunk], wanted: np.ndarray, dim: int | None = None) -> np.ndarray:
    """The vectors of the sorted ids ``wanted`` from one pass over the chunks (e.g. one
    :func:`stream_chunks` pass), in id order, float16 when the storage is
    (:func:`fill_matrix`): a sample without holding the rest."""
    return fill_matrix(only_ids(chunks, wanted), wanted, dim)


def choose_kind(n: int, ivf_above: int | None = None) -> str:
    """flat below :data:`EXACT_MAX`; from ``ivf_above`` (None: never) ``ivfsq8``, or ``ivfpq``
    from :data:`PQ_ABOVE`; else hnsw."""
    if n < EXACT_MAX:
        return "flat"
    if ivf_above is None or n < ivf_above:
        return "hnsw"
    return "ivfpq" if n >= PQ_ABOVE else "ivfsq8"


def _new_index(kind: str, dim: int) -> Any:
    faiss = _faiss()
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    else:
        base = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        base.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap2(base)


def read_meta(storage: Storage, space: str, segments: bool = False) -> dict[str, Any] | None:
    _, _, meta_rel = _paths(space, segments)
    if not storage.exists(meta_rel):
        return None
    meta: dict[str, Any] = json.loads(storage.read_bytes(meta_rel))
    return meta


def build_index(
    storage: Storage,
    cat: Catalog,
    space: str,
    kind: str = "auto",
    *,
    segments: bool = False,
    ivf_above: int | None = IVF_ABOVE,
    imap: ShardMap | None = None,
) -> IndexReport:
    """Build or extend the index of ``space`` from the stored embeddings (of the images, or of
    the segments with ``segments=True``). ``kind="auto"``: see the module docstring. ``imap``:
    IVF kinds add their vectors as shards run by it (e.g. Ray tasks; the same index)."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; use one of {', '.join(SPACES)}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    faiss = _faiss()
    t0 = time.monotonic()
    if kind == "auto":
        kind = choose_kind(_stored_count(cat, space, segments), ivf_above)
    if kind in IVF_KINDS:
        return _build_ivf_index(storage, cat, space, kind, segments, t0, imap)
    vectors, keys, id_col, model_id = _stored_vectors(cat, space, segments)
    idx = keys.column(id_col).to_numpy()
    index_rel, ids_rel, meta_rel = _paths(space, segments)
    meta = read_meta(storage, space, segments)
    index, known = None, np.zeros(0, np.int64)
    if meta and meta.get("kind") == kind and meta.get("model_id") == model_id:
        known = storage.read_parquet(ids_rel).column(id_col).to_numpy()
        if np.isin(known, idx).all():
            index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_rel), np.uint8))
        else:
            known = np.zeros(0, np.int64)
    if index is None:
        index = _new_index(kind, vectors.shape[1])
    new = ~np.isin(idx, known)
    add_rows(index, vectors, idx, np.flatnonzero(new))
    all_idx = np.concatenate([known, idx[new]])
    order = np.argsort(idx, kind="stable")
    storage.write_bytes_atomic(index_rel, faiss.serialize_index(index).tobytes())
    storage.write_parquet_atomic(
        ids_rel, keys.take(order[np.searchsorted(idx, all_idx, sorter=order)])
    )
    params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    new_meta = {
        "space": space,
        "segments": segments,
        "kind": kind,
        "metric": "inner_product (cosine of unit vectors)",
        "params": params if kind == "hnsw" else {},
        "dim": int(vectors.shape[1]),
        "count": len(all_idx),
        "model_id": model_id,
        "built_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    storage.write_bytes_atomic(meta_rel, json.dumps(new_meta, indent=1).encode())
    return IndexReport(space, kind, len(all_idx), int(new.sum()), time.monotonic() - t0)


def add_rows(index: Any, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
    """Add ``vectors[rows]`` with their ``ids`` to ``index``, :data:`ADD_BATCH` rows at a time
    converted to float32 (a float16 matrix is never copied whole)."""
    for lo in range(0, rows.size, ADD_BATCH):
        sel = rows[lo : lo + ADD_BATCH]
        batch = np.ascontiguousarray(vectors[sel], dtype=np.float32)
        index.add_with_ids(batch, np.ascontiguousarray(ids[sel], dtype=np.int64))


def _load(storage: Storage, space: str, segments: bool) -> tuple[Any, pa.Table, dict[str, Any]]:
    """The index, its id map table and its metadata."""
    faiss = _faiss()
    meta = read_meta(storage, space, segments)
    what = f"{space} segment" if segments else space
    if meta is None:
        flag = " --segments" if segments else ""
        raise ValueError(f"no {what} index: run `exokiratory index build {space}{flag}` first")
    index_rel, ids_rel, _ = _paths(space, segments)
    index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_rel), np.uint8))
    ids = storage.read_parquet(ids_rel)
    if ids.num_rows != index.ntotal or ids.num_rows != meta["count"]:
        raise RuntimeError(f"{what} index files disagree (interrupted build?): rebuild it")
    return index, ids, meta


def load_index(storage: Storage, space: str) -> tuple[Any, dict[int, str], dict[str, Any]]:
    """The index, its image_idx -> image_id map, and its metadata."""
    index, ids, meta = _load(storage, space, False)
    id_map = dict(
        zip(ids.column("image_idx").to_pylist(), ids.column("image_id").to_pylist(), strict=True)
    )
    return index, id_map, meta


def search_vectors(
    storage: Storage, space: str, queries: np.ndarray, k: int, *, segments: bool = False
) -> pa.Table:
    """Top-``k`` neighbours of each query vector: query, rank, image_idx, image_id, score
    (with ``segments=True``: query, rank, segment_id, image_id, image_idx, score)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    q = np.ascontiguousarray(np.atleast_2d(queries).astype(np.float32))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    if segments:
        return _search_segments(storage, space, q, k)
    index, id_map, _ = load_index(storage, space)
    scores, found = index.search(q, min(k, index.ntotal))
    rows = []
    for qi in range(q.shape[0]):
        for rank, (s, i) in enumerate(zip(scores[qi], found[qi], strict=True)):
            if i < 0:
                continue
            rows.append(
                {
                    "query": qi,
                    "rank": rank + 1,
                    "image_idx": int(i),
                    "image_id": id_map[int(i)],
                    "score": float(s),
                }
            )
    schema = pa.schema(
        [
            ("query", pa.int32()),
            ("rank", pa.int32()),
            ("image_idx", pa.int64()),
            ("image_id", pa.string()),
            ("score", pa.float32()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


SEGMENT_HITS_SCHEMA = pa.schema(
    [
        ("query", pa.int32()),
        ("rank", pa.int32()),
        ("segment_id", pa.string()),
        ("image_id", pa.string()),
        ("image_idx", pa.int64()),
        ("score", pa.float32()),
    ]
)


def _search_segments(storage: Storage, space: str, q: np.ndarray, k: int) -> pa.Table:
    index, ids, _ = _load(storage, space, True)
    scores, found = index.search(q, min(k, index.ntotal))
    id_col = ids.column("id").to_numpy()
    order = np.argsort(id_col, kind="stable")
    hit = found >= 0
    qi, rank = np.nonzero(hit)
    rows = order[np.searchsorted(id_col, found[hit], sorter=order)]
    keys = ids.take(rows)
    return pa.table(
        {
            "query": qi.astype(np.int32),
            "rank": (rank + 1).astype(np.int32),
            "segment_id": keys.column("segment_id"),
            "image_id": keys.column("image_id"),
            "image_idx": keys.column("image_idx"),
            "score": scores[hit].astype(np.float32),
        },
        schema=SEGMENT_HITS_SCHEMA,
    )


# ------------------------------------------------------------------------ IVF (streamed)


def _embedding_view(space: str, segments: bool) -> tuple[str, str, str]:
    """(view, what, hint) of the stored embeddings of ``space``."""
    if segments:
        return (
            f"segment_embeddings_{space}",
            f"{space} segment embeddings",
            f"run `exokiratory run segment-embed-{space}` first",
        )
    return (
        f"embeddings_{space}",
        f"{space} embeddings",
        f"run `exokiratory run embed-{space}` first",
    )


def _stored_count(cat: Catalog, space: str, segments: bool) -> int:
    view, what, hint = _embedding_view(space, segments)
    if view not in cat.views:
        raise ValueError(f"no {what}: {hint}")
    return int(cat.scalar(f"SELECT count(*) FROM {view} WHERE error IS NULL"))


def _stored_keys(cat: Catalog, space: str, segments: bool) -> tuple[pa.Table, str, str, int]:
    """(id map rows, id column, model_id, dim) of the stored embeddings, key columns only."""
    view, what, hint = _embedding_view(space, segments)
    if view not in cat.views:
        raise ValueError(f"no {what}: {hint}")
    if segments:
        t = cat.query(
            f"SELECT segment_id, image_id, image_idx, mask_index FROM {view} "
            "WHERE error IS NULL ORDER BY image_idx, mask_index"
        )
        idx = t.column("image_idx").to_numpy()
        keys = pa.table(
            {
                "id": segment_int_id(idx, t.column("mask_index").to_numpy()),
                "segment_id": t.column("segment_id"),
                "image_id": t.column("image_id"),
                "image_idx": idx,
            }
        )
        id_col = "id"
    else:
        keys = cat.query(
            f"SELECT image_idx, image_id FROM {view} WHERE error IS NULL ORDER BY image_idx"
        )
        id_col = "image_idx"
    if keys.num_rows == 0:
        raise ValueError(f"no {what} yet: {hint}")
    models = cat.query(f"SELECT DISTINCT model_id FROM {view} WHERE error IS NULL")
    model_id = single_model(models, view)
    return keys, id_col, model_id, _stored_dim(cat, space, segments, model_id)


def _stored_dim(cat: Catalog, space: str, segments: bool, model_id: str) -> int:
    """The embedding size, from one row of an image embedding part when there is one: asking
    the view makes DuckDB compute its one-row-per-key window with every vector (+2 GB held
    during the query at 10^6 x 768)."""
    if not segments:
        for name in cat.storage.listdir(f"embeddings/{space}"):
            src = cat.raw_source(f"embeddings/{space}/{name}")
            sql = f"SELECT len(embedding) FROM {src} WHERE error IS NULL AND model_id = ? LIMIT 1"
            dim = cat.scalar(sql, [model_id]) if src else None
            if dim is not None:
                return int(dim)
    view, _, _ = _embedding_view(space, segments)
    return int(cat.scalar(f"SELECT len(embedding) FROM {view} WHERE error IS NULL LIMIT 1"))


def stream_chunks(cat: Catalog, space: str, segments: bool, rows: int = READ_BATCH) -> Any:
    """A function starting a pass over (ids, float32 vectors) chunks of ``rows`` stored
    embeddings, read from DuckDB in record batches. Image embeddings are read from their parts
    directly, keeping the row the view keeps for each key (:class:`RawParts`): the view's
    one-row-per-key window would hold every vector inside DuckDB (measured: +740 MB at
    10^5 x 768, against +270 MB for the direct read). Otherwise through the view (segment
    embeddings, mixed folders): those rows always stream through this process, also on a
    cluster."""
    return stream_sources(cat, space, segments, rows)[0]


def stream_sources(
    cat: Catalog, space: str, segments: bool, rows: int = READ_BATCH
) -> tuple[Callable[[], Iterator[Chunk]], RawParts | None]:
    """(:func:`stream_chunks`'s function, the :class:`RawParts` it reads or None when it
    reads through the view). With the parts, shard tasks can read their own rows instead
    (:meth:`RawParts.reader`: the same chunks; the parts are found once for both)."""
    raw = None if segments else RawParts.find(cat, space)
    if raw is not None:
        return (lambda: raw.chunks(cat, rows)), raw
    view, _, _ = _embedding_view(space, segments)
    id_sql = "(image_idx << 20) | mask_index AS id" if segments else "image_idx"
    id_col = "id" if segments else "image_idx"
    sql = f"SELECT {id_sql}, embedding FROM {view} WHERE error IS NULL"

    def chunks() -> Iterator[Chunk]:
        rel = cat.con.sql(sql)
        reader = getattr(rel, "to_arrow_reader", None) or getattr(rel, "fetch_record_batch")  # noqa: B009
        return arrow_chunks(reader(rows), id_col)

    return chunks, None


@dataclass(frozen=True)
class RawParts:
    """The parts of ``embeddings_<space>`` read without the view: ``src`` (the catalog's raw
    source of the dataset's folder) and, per error-free image in image_idx order, the part
    (``filename``) whose row the view keeps (:func:`exokiratory.core.dataset.keep_one_sql` on
    the key columns only); ``folder`` and ``files``: the dataset's folder and the parts
    ``src`` reads (relative to the workspace, in ``src``'s order)."""

    src: str
    ids: np.ndarray
    parts: pa.Array
    folder: str = ""
    files: tuple[str, ...] = ()

    @classmethod
    def find(cls, cat: Catalog, space: str) -> RawParts | None:
        """The folder under ``embeddings/<space>/`` whose parts make the view (the one holding
        its model's rows, with the view's row count), or None (then read through the view)."""
        view = f"embeddings_{space}"
        if view not in cat.views:
            return None
        models = cat.query(f"SELECT DISTINCT model_id FROM {view} WHERE error IS NULL")
        count = cat.scalar(f"SELECT count(*) FROM {view} WHERE error IS NULL")
        if models.num_rows != 1:
            return None
        for name in cat.storage.listdir(f"embeddings/{space}"):
            folder = f"embeddings/{space}/{name}"
            files = cat.storage.list_files(folder, ".parquet")
            src = cat.raw_source(folder, files)
            found = cls._winners(cat, src) if src else None
            if found is not None and len(found.ids) == count:
                held = cat.query(f"SELECT DISTINCT model_id FROM {src} WHERE error IS NULL")
                if held.column(0).to_pylist() == models.column(0).to_pylist():
                    return replace(found, folder=folder, files=tuple(files))
        return None

    @classmethod
    def _winners(cls, cat: Catalog, src: str) -> RawParts | None:
        cols = f"(SELECT image_id, image_idx, error, filename, filename AS _part FROM {src})"
        one = keep_one_sql(cols, ("image_id",), True, "_part")  # the view's rule, on keys
        try:
            t = cat.query(f"SELECT image_idx, filename FROM ({one}) WHERE error IS NULL ORDER BY 1")
        except Exception:  # not a dataset of this schema
            return None
        return cls(src, t.column(0).to_numpy(), t.column(1).combine_chunks())

    def chunks(self, cat: Catalog, rows: int) -> Iterator[Chunk]:
        """(image_idx, float32 vectors) of the kept rows, ``rows`` rows read at a time."""
        rel = cat.con.sql(
            f"SELECT image_idx, filename, embedding FROM {self.src} WHERE error IS NULL"
        )
        reader = getattr(rel, "to_arrow_reader", None) or getattr(rel, "fetch_record_batch")  # noqa: B009
        for batch in reader(rows):
            keep = self._kept(batch)
            if keep.all():  # the usual case: no copy
                yield from arrow_chunks([batch], "image_idx")
            elif keep.any():
                yield from arrow_chunks([batch.filter(pa.array(keep))], "image_idx")

    def _kept(self, batch: pa.RecordBatch) -> np.ndarray:
        """Whether each row of ``batch`` is the one the view keeps for its key."""
        idx = batch.column(0).to_numpy(zero_copy_only=False)
        pos = np.minimum(np.searchsorted(self.ids, idx), max(self.ids.size - 1, 0))
        hit = self.ids[pos] == idx
        same = pc.equal(batch.column(1), self.parts.take(pa.array(pos))).to_numpy(
            zero_copy_only=False
        )
        return np.asarray(hit & same, bool)

    def reader(self, cat: Catalog, rows: int = READ_BATCH) -> PartReader:
        """A :class:`PartReader` of these parts for shard tasks: the parts' row groups (from
        their Parquet footers, read by DuckDB: no vector), the storage's URL and options, and
        the keep rule as codes (``ids`` and the winning part of each as an int32 code into the
        part names). ``rows``: the record batch size of :meth:`chunks` whose chunks the tasks
        reproduce."""
        storage = cat.storage
        urls = [_duckdb_url(storage, f) for f in self.files]
        compacted = any(is_compacted(f) for f in self.files)
        groups = cat.query(
            "SELECT file_name, row_group_id, any_value(row_group_num_rows) AS n "
            "FROM parquet_metadata(?) GROUP BY ALL",
            [urls],
        )
        number = {u: i for i, u in enumerate(urls)}
        file_no = np.array([number[u] for u in groups.column(0).to_pylist()], np.int64)
        group = groups.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.lexsort((group, file_no))  # the stream's order: file, then row group
        enc = self.parts.dictionary_encode()
        return PartReader(
            url=storage.url,
            options=dict(storage.storage_options),
            files=self.files,
            # the filename a row without _origin has in the view (catalog.raw_source)
            names=tuple(_parse_filename(u) if compacted else u for u in urls),
            ids=self.ids,
            codes=enc.indices.to_numpy(zero_copy_only=False).astype(np.int32),
            part_names=enc.dictionary,
            file_no=file_no[order],
            group=group[order],
            group_rows=groups.column(2).to_numpy(zero_copy_only=False).astype(np.int64)[order],
            batch=rows,
        )


def _duckdb_url(storage: Storage, rel: str) -> str:
    """A workspace file as the catalog hands it to DuckDB (its ``filename`` column)."""
    full = storage.path(rel)
    return full if storage.is_local else str(storage.fs.unstrip_protocol(full))


def _parse_filename(url: str) -> str:
    """DuckDB's ``parse_filename``: the last component of a path, after ``/`` or ``\\``."""
    return re.split(r"[/\\]", url)[-1]


@dataclass(frozen=True)
class PartReader:
    """The embedding parts of :class:`RawParts` read by shard tasks themselves
    (:class:`.ivf.ShardReader`): a descriptor is a range ``(lo, hi)`` of the parts' row groups
    in stream order (file, then row group); a task opens each part through the workspace
    storage (``Storage(url, options)``: on a cluster a bucket, or a folder, every node reads),
    keeps the error-free rows the view keeps (the same rule as :meth:`RawParts._kept`, by part
    codes) and gives the chunks :meth:`RawParts.chunks` gives for those rows: DuckDB cuts its
    record batches of ``batch`` rows inside each row group, so the tasks cut the same ones and
    the chunks (hence the assignment and the IVF index) are identical. Shared once with every
    task: ``ids`` and ``codes`` are 12 bytes per image (1.2 GB at 10^8, zero-copy in Ray's
    object store), the rest is per part."""

    url: str
    options: dict[str, Any]
    files: tuple[str, ...]
    names: tuple[str, ...]
    ids: np.ndarray
    codes: np.ndarray
    part_names: pa.Array
    file_no: np.ndarray
    group: np.ndarray
    group_rows: np.ndarray
    batch: int = READ_BATCH

    def shards(self, rows: int) -> list[tuple[int, int]]:
        """Ranges of consecutive row groups holding at least ``rows`` stored rows each (the
        last one fewer), in stream order."""
        out: list[tuple[int, int]] = []
        lo, held = 0, 0
        for i, n in enumerate(self.group_rows.tolist()):
            held += n
            if held >= rows:
                out.append((lo, i + 1))
                lo, held = i + 1, 0
        if lo < self.group.size:
            out.append((lo, int(self.group.size)))
        return out

    def read(self, shard: tuple[int, int]) -> Iterator[Chunk]:
        """(image_idx, float32 vectors) chunks of the kept rows of the row groups ``shard``,
        read from storage here: the chunks of :meth:`RawParts.chunks` for those rows."""
        storage = Storage(self.url, self.options)
        lo, hi = shard
        while lo < hi:
            f = int(self.file_no[lo])
            end = lo + 1
            while end < hi and self.file_no[end] == f:
                end += 1
            yield from self._read_part(storage, f, self.group[lo:end].tolist())
            lo = end

    def _read_part(self, storage: Storage, f: int, groups: list[int]) -> Iterator[Chunk]:
        full = storage.path(self.files[f])
        with contextlib.ExitStack() as stack:  # a local part: Arrow's own (faster) file reads
            source = full if storage.is_local else stack.enter_context(storage.fs.open(full, "rb"))
            pf = pq.ParquetFile(source)
            stack.callback(pf.close)
            held = set(pf.schema_arrow.names)
            cols = [c for c in ("image_idx", "error", "embedding", ORIGIN) if c in held]
            for g in groups:
                batches = pf.iter_batches(batch_size=self.batch, row_groups=[g], columns=cols)
                for batch in _cut(map(_error_free, batches), self.batch):
                    keep = self._kept(batch, self.names[f])
                    if keep.all():
                        yield from arrow_chunks([batch], "image_idx")
                    elif keep.any():
                        yield from arrow_chunks([batch.filter(pa.array(keep))], "image_idx")

    def _kept(self, batch: pa.RecordBatch, name: str) -> np.ndarray:
        """Whether each row of ``batch`` (of the part named ``name`` in the view) is the one
        the view keeps for its key (:meth:`RawParts._kept` by codes)."""
        if self.ids.size == 0:
            return np.zeros(batch.num_rows, bool)
        idx = batch.column("image_idx").to_numpy(zero_copy_only=False)
        pos = np.minimum(np.searchsorted(self.ids, idx), self.ids.size - 1)
        hit = self.ids[pos] == idx
        if ORIGIN in batch.schema.names:  # compacted: rows keep the name of their part
            names = pc.fill_null(batch.column(ORIGIN), name)
        else:
            names = pa.array([name])
        found = pc.fill_null(pc.index_in(names, value_set=self.part_names), -1)
        codes = found.to_numpy(zero_copy_only=False)
        return np.asarray(hit & (codes == self.codes[pos]), bool)


def _error_free(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows of ``batch`` without an error (the readers' ``WHERE error IS NULL``)."""
    if "error" not in batch.schema.names:
        return batch
    return batch.filter(pc.is_null(batch.column("error")))


def _cut(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches`` (one row group) as batches of exactly ``rows`` rows, the last
    one fewer (how DuckDB's record batch reader cuts a row group), empty ones left out."""
    held: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        held.append(batch)
        n += batch.num_rows
        while n >= rows:
            table = pa.Table.from_batches(held).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            held, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def _build_ivf_index(
    storage: Storage,
    cat: Catalog,
    space: str,
    kind: str,
    segments: bool,
    t0: float,
    imap: ShardMap | None = None,
) -> IndexReport:
    """An IVF index trained on a seeded sample and filled chunk by chunk (:mod:`.ivf`)."""
    faiss = _faiss()
    keys, id_col, model_id, dim = _stored_keys(cat, space, segments)
    idx = keys.column(id_col).to_numpy()
    index_rel, ids_rel, meta_rel = _paths(space, segments)
    meta = read_meta(storage, space, segments)
    index, known = None, np.zeros(0, np.int64)
    if meta and meta.get("kind") == kind and meta.get("model_id") == model_id:
        known = storage.read_parquet(ids_rel).column(id_col).to_numpy()
        if np.isin(known, idx).all():
            index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_rel), np.uint8))
        else:
            known = np.zeros(0, np.int64)
    chunks, raw = stream_sources(cat, space, segments)
    # on a cluster the tasks read their own rows from the parts (none through this process)
    reader = raw.reader(cat) if imap is not None and raw is not None else None
    index, params, added = build_ivf(kind, idx, dim, chunks, index, known, imap, reader)
    if index.ntotal != idx.size:
        raise RuntimeError("the embeddings changed while the index was built: build it again")
    storage.write_bytes_atomic(index_rel, faiss.serialize_index(index).tobytes())
    storage.write_parquet_atomic(ids_rel, keys)
    new_meta = {
        "space": space,
        "segments": segments,
        "kind": kind,
        "metric": "inner_product (cosine of unit vectors)",
        "params": params,
        "dim": dim,
        "count": int(idx.size),
        "model_id": model_id,
        "built_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    storage.write_bytes_atomic(meta_rel, json.dumps(new_meta, indent=1).encode())
    return IndexReport(space, kind, int(idx.size), added, time.monotonic() - t0)
