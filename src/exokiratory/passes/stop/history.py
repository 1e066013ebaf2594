"""The history of the structure: one snapshot per change, stored in ``history/structure/``.

A snapshot is one Parquet file ``snap-<seq:06d>-<digest>.parquet`` written atomically (a
temporary name, then a rename; a single put on an object store), so a kill at any instant leaves
it whole or absent, and readers skip temporary files and any file they cannot read (with a
warning): the history stays readable. Its rows (:data:`SNAPSHOT_SCHEMA`) are ``signal``, ``key``,
``value``, ``score``, ``vector``; its schema metadata (``exokiratory.snapshot``) holds the run
that recorded it, the step that triggered it, the passes that wrote rows before it in that run
(``wrote``), the digest of every signal, the settings digest
(:meth:`.base.StopParams.snapshot_digest`) and a few measures (mutual k-NN alignment, Vendi
score...). ``digest`` digests the rows and measures only, so recording the same structure again
writes nothing (idempotent reruns); two writers racing write the same name or, at worst, two
equal snapshots with the next sequence number, which compare as "no change".

Bounded memory (10^7 images: 3 x 10^7 cluster rows): the rows are spilled to a local temporary
Parquet file, sorted there by DuckDB (an external sort holding at most :data:`DUCKDB_MEMORY`)
and digested in streamed passes, one column at a time (:class:`SnapshotRows`; the digests of
:func:`signal_digests`). Each row group of a snapshot file holds one signal's rows, so a reader
of one signal reads only its row groups (:func:`read_signal`), and two snapshots' keys are
joined by DuckDB on the files (:meth:`History.joined`).

The signals: ``cluster:<space>:<level>`` (key image_id, value cluster id), ``stability:<space>:
<level>`` (key cluster id, score its bootstrap stability), ``motif:<space>`` (key segment_id,
value motif id), ``outlier:<set>`` (key image_id, value rank), ``caption`` (key caption_id),
``vocab`` (key a distinctive word, value its caption count), ``caption_basis`` (key the
component, vector the PCA axis).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from exokiratory.core.hashing import update_joined
from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

HISTORY = "history/structure"
SNAPSHOT_VERSION = 1
META_KEY = b"exokiratory.snapshot"
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("signal", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("vector", pa.list_(pa.float32())),
    ]
)
_NAME = re.compile(r"snap-(\d{6})-([0-9a-f]{16})\.parquet$")
#: rows spilled, digested, written and read at a time (one row group of a snapshot file holds
#: one signal's rows, at most this many)
BATCH_ROWS = 131_072
#: the memory DuckDB may hold for the external sort of a snapshot's rows and for the joins of
#: two snapshots' keys (the rest spills to a local temporary folder)
DUCKDB_MEMORY = "1GB"
#: the spill's insertion order: rows of equal (signal, key) keep it, as a stable sort does
_ROW = "_row"


@dataclass(frozen=True)
class SnapshotInfo:
    """A stored snapshot: its file and its metadata (read from the footer only)."""

    seq: int
    digest: str
    rel: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1].removesuffix(".parquet")

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", ""))

    @property
    def trigger(self) -> str:
        return str(self.meta.get("trigger", ""))

    @property
    def signals(self) -> dict[str, dict[str, Any]]:
        return dict(self.meta.get("signals", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics", {}))


# -- writing -----------------------------------------------------------------------------------
def signal_digests(table: pa.Table) -> dict[str, dict[str, Any]]:
    """signal -> {rows, digest} of a table sorted by (signal, key)."""
    if table.num_rows == 0:
        return {}
    codes = table.column("signal").combine_chunks().dictionary_encode()
    idx = codes.indices.to_numpy(zero_copy_only=False)
    starts = [0, *(np.flatnonzero(np.diff(idx)) + 1).tolist()]
    names = [codes.dictionary[int(idx[s])].as_py() for s in starts]
    out: dict[str, dict[str, Any]] = {}
    for i, (start, name) in enumerate(zip(starts, names, strict=True)):
        end = starts[i + 1] if i + 1 < len(starts) else table.num_rows
        part = table.slice(start, end - start)
        h = hashlib.sha256()
        update_joined(h, part.column("key"), "\n")  # 10^7 keys per level at 10^7
        for col in ("value", "score"):
            h.update(part.column(col).to_numpy(zero_copy_only=False).tobytes())
        vec = part.column("vector").combine_chunks().flatten()
        h.update(np.asarray(vec.to_numpy(zero_copy_only=False), np.float32).tobytes())
        out[str(name)] = {"rows": end - start, "digest": h.hexdigest()[:16]}
    return out


def snapshot_digest(
    signals: dict[str, dict[str, Any]], metrics: dict[str, Any], params: str
) -> str:
    data = json.dumps({"s": signals, "m": metrics, "p": params}, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


# -- rows in bounded memory --------------------------------------------------------------------
Run = tuple[str, int, int]  # a signal and its rows [start, end) in a table sorted by signal


def conform_table(t: pa.Table | pa.RecordBatch) -> pa.Table:
    """Rows holding some of the snapshot columns, as a table of the snapshot schema."""
    cols = {
        f.name: t.column(f.name) if f.name in t.schema.names else pa.nulls(t.num_rows, f.type)
        for f in SNAPSHOT_SCHEMA
    }
    return pa.table(cols).cast(SNAPSHOT_SCHEMA)


def _runs(chunks: Iterable[pa.Array]) -> list[Run]:
    """The runs of equal signals of a sorted ``signal`` column given in chunks."""
    out: list[list[Any]] = []
    offset = 0
    for arr in chunks:
        if len(arr) == 0:
            continue
        codes = arr.dictionary_encode()
        idx = codes.indices.to_numpy(zero_copy_only=False)
        starts = [0, *(np.flatnonzero(np.diff(idx)) + 1).tolist(), len(arr)]
        for lo, hi in itertools.pairwise(starts):
            name = str(codes.dictionary[int(idx[lo])].as_py())
            if out and out[-1][0] == name and out[-1][2] == offset + lo:
                out[-1][2] = offset + hi
            else:
                out.append([name, offset + lo, offset + hi])
        offset += len(arr)
    return [(str(n), int(lo), int(hi)) for n, lo, hi in out]


def _slices(
    batches: Iterable[pa.RecordBatch], runs: Sequence[Run]
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """``batches`` (consecutive rows of a sorted table) cut at the signal boundaries ``runs``:
    (signal, rows of that signal only), in row order."""
    i, offset = 0, 0
    for b in batches:
        end = offset + b.num_rows
        while i < len(runs) and runs[i][1] < end:
            name, lo, hi = runs[i]
            a, z = max(lo, offset), min(hi, end)
            if z > a:
                yield name, b.slice(a - offset, z - a)
            if hi > end:
                break
            i += 1
        offset = end


def stream_digests(path: str, runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """:func:`signal_digests` of a local Parquet file of snapshot rows sorted by (signal, key)
    whose signals span ``runs``, streamed: one pass per column, one hasher per signal."""
    pf = pq.ParquetFile(path)

    def column(name: str) -> Iterator[tuple[str, pa.Array]]:
        batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=[name])
        for sig, b in _slices(batches, runs):
            yield sig, b.column(0)

    hashers = {name: hashlib.sha256() for name, _, _ in runs}
    started: set[str] = set()
    for sig, keys in column("key"):  # "\n" between keys, also across batches
        hashers[sig].update(b"\n" if sig in started else b"")
        update_joined(hashers[sig], keys, "\n")
        started.add(sig)
    hashers = _hash_values(column("value"), hashers)
    for sig, scores in column("score"):
        hashers[sig].update(scores.to_numpy(zero_copy_only=False).tobytes())
    for sig, vectors in column("vector"):
        flat = vectors.flatten().to_numpy(zero_copy_only=False)
        hashers[sig].update(np.asarray(flat, np.float32).tobytes())
    return {n: {"rows": hi - lo, "digest": hashers[n].hexdigest()[:16]} for n, lo, hi in runs}


def _hash_values(values: Iterable[tuple[str, pa.Array]], hashers: dict[str, Any]) -> dict[str, Any]:
    """The value bytes as :func:`signal_digests` hashes them: int64, or float64 with NaN for
    nulls when the signal has a null anywhere (known only at its end: both are hashed)."""
    floats = {n: h.copy() for n, h in hashers.items()}
    has_null: set[str] = set()
    for sig, v in values:
        if v.null_count:
            has_null.add(sig)
            floats[sig].update(v.to_numpy(zero_copy_only=False).tobytes())
            continue
        ints = v.to_numpy(zero_copy_only=False)
        hashers[sig].update(ints.tobytes())
        floats[sig].update(ints.astype(np.float64).tobytes())
    return {n: floats[n] if n in has_null else h for n, h in hashers.items()}


SPILL_PREFIX = "exokiratory-snapshot-"


def _sweep_spills() -> None:
    """Remove the spill folders of writers that were killed (their process is gone): a killed
    kernel must not leave 10^7-row temporary files behind in the system temp folder."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name.removeprefix(SPILL_PREFIX).split("-", 1)[0]
        if name.startswith(SPILL_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duckdb(tmp: str) -> Any:
    """A DuckDB connection that holds at most :data:`DUCKDB_MEMORY` and spills to ``tmp``."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = {_quoted(DUCKDB_MEMORY)}")
    con.execute(f"SET temp_directory = {_quoted(tmp)}")
    return con


class SnapshotRows:
    """The rows of a snapshot being built, in bounded memory. Tables and batch streams
    (:meth:`add`) are spilled to a local temporary Parquet file; :meth:`sort` sorts them by
    (signal, key) on disk (DuckDB's external sort) and digests every signal in streamed passes
    (:func:`stream_digests`); small tables may then be :meth:`hold` in memory (their own
    signals). :meth:`tables` gives every row in (signal, key) order. A context manager: the
    temporary folder is removed on exit."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        _sweep_spills()
        self._spill = os.path.join(self.dir, "rows.parquet")
        self._sorted = os.path.join(self.dir, "sorted.parquet")
        schema = SNAPSHOT_SCHEMA.append(pa.field(_ROW, pa.int64()))
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._spill, schema)
        self._spilled = 0
        self._runs: list[Run] = []
        self._held = SNAPSHOT_SCHEMA.empty_table()
        self._held_runs: dict[str, tuple[int, int]] = {}
        self.signals: dict[str, dict[str, Any]] = {}
        self.sorted = False

    def __enter__(self) -> SnapshotRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def num_rows(self) -> int:
        return self._spilled + self._held.num_rows

    def add(self, source: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table]) -> None:
        """Spill rows holding some of the snapshot columns (a table, a batch, a stream)."""
        if self._writer is None:
            raise RuntimeError("snapshot rows are added before sort()")
        parts = [source] if isinstance(source, pa.Table | pa.RecordBatch) else source
        for part in parts:
            for lo in range(0, part.num_rows, BATCH_ROWS):
                t = conform_table(part.slice(lo, BATCH_ROWS))
                n = t.num_rows
                row = pa.array(np.arange(self._spilled, self._spilled + n, dtype=np.int64))
                self._writer.write_table(t.append_column(_ROW, row))
                self._spilled += n

    def sort(self) -> dict[str, dict[str, Any]]:
        """Sort the spilled rows on disk and digest them; returns the digests."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spilled and not self.sorted:
            with _duckdb(os.path.join(self.dir, "duckdb")) as con:
                cols = ", ".join(SNAPSHOT_SCHEMA.names)
                con.execute(
                    f"COPY (SELECT {cols} FROM read_parquet({_quoted(self._spill)}) "
                    f"ORDER BY signal, key, {_ROW}) TO {_quoted(self._sorted)} (FORMAT parquet)"
                )
            os.unlink(self._spill)
            pf = pq.ParquetFile(self._sorted)
            self._runs = _runs(b.column(0) for b in pf.iter_batches(BATCH_ROWS, columns=["signal"]))
            self.signals = stream_digests(self._sorted, self._runs)
        self.sorted = True
        return self.signals

    def hold(self, table: pa.Table) -> None:
        """Add a small table after :meth:`sort`, held in memory (signals not spilled)."""
        if not self.sorted:
            self.sort()
        t = pa.concat_tables([self._held, conform_table(table)])
        t = t.sort_by([("signal", "ascending"), ("key", "ascending")])
        runs = _runs(t.column("signal").chunks)
        clash = sorted({n for n, _, _ in runs} & {n for n, _, _ in self._runs})
        if clash:
            raise ValueError(f"snapshot signals both spilled and held: {', '.join(clash)}")
        self._held, self._held_runs = t, {n: (lo, hi) for n, lo, hi in runs}
        self.signals = dict(sorted({**self.signals, **signal_digests(t)}.items()))

    def tables(self) -> Iterator[pa.Table]:
        """Every row, in (signal, key) order, at most :data:`BATCH_ROWS` rows and one signal
        per table."""
        if not self.sorted:
            self.sort()
        spilled = self._spilled_slices()
        pending = next(spilled, None)
        for name in self.signals:
            if name in self._held_runs:
                lo, hi = self._held_runs[name]
                for start in range(lo, hi, BATCH_ROWS):
                    yield self._held.slice(start, min(BATCH_ROWS, hi - start))
                continue
            while pending is not None and pending[0] == name:
                yield pa.Table.from_batches([pending[1]]).cast(SNAPSHOT_SCHEMA)
                pending = next(spilled, None)

    def _spilled_slices(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        if not self._runs:
            return
        batches = pq.ParquetFile(self._sorted).iter_batches(BATCH_ROWS)
        yield from _slices(batches, self._runs)


def write_snapshot(
    storage: Storage,
    table: pa.Table | SnapshotRows,
    metrics: dict[str, Any],
    *,
    params_digest: str,
    trigger: str,
    run_id: str,
    wrote: Sequence[str] = (),
) -> SnapshotInfo | None:
    """Store a snapshot unless there is no structure yet or the newest stored snapshot holds
    the same (then None). ``table``: its rows, in memory or spilled (:class:`SnapshotRows`,
    in bounded memory at 3 x 10^7 rows); the file holds them sorted by (signal, key)."""
    if isinstance(table, pa.Table):
        with SnapshotRows() as rows:
            rows.add(table.select(SNAPSHOT_SCHEMA.names))
            return write_snapshot(
                storage,
                rows,
                metrics,
                params_digest=params_digest,
                trigger=trigger,
                run_id=run_id,
                wrote=wrote,
            )
    if table.num_rows == 0 and not metrics:
        return None
    signals = table.sort()
    digest = snapshot_digest(signals, metrics, params_digest)
    stored = list_snapshots(storage)
    if stored and stored[-1].digest == digest:
        return None
    seq = stored[-1].seq + 1 if stored else 1
    meta = {
        "version": SNAPSHOT_VERSION,
        "seq": seq,
        "digest": digest,
        "run_id": run_id,
        "trigger": trigger,
        "wrote": list(wrote),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params_digest": params_digest,
        "signals": signals,
        "metrics": metrics,
    }
    rel = f"{HISTORY}/snap-{seq:06d}-{digest}.parquet"
    schema = SNAPSHOT_SCHEMA.with_metadata({META_KEY: json.dumps(meta, default=str)})
    storage.write_parquet_stream(rel, schema, table.tables())
    log.info("structure snapshot %s recorded after %s", rel, trigger)
    return SnapshotInfo(seq, digest, rel, meta)


def new_run_id() -> str:

    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


# -- reading -----------------------------------------------------------------------------------
def _read_meta(storage: Storage, rel: str) -> dict[str, Any] | None:
    try:
        with storage.fs.open(storage.path(rel), "rb") as fh:
            md = pq.ParquetFile(fh).schema_arrow.metadata or {}
        return dict(json.loads(md[META_KEY]))
    except Exception as exc:  # a torn or foreign file never breaks the history
        log.warning("skipping unreadable structure snapshot %s: %s", rel, exc)
        return None


def list_snapshots(storage: Storage) -> list[SnapshotInfo]:
    """Every readable snapshot, oldest first (by sequence, then name)."""
    out = []
    for rel in storage.list_files(HISTORY, ".parquet"):
        m = _NAME.search(rel)
        if not m:
            continue
        meta = _read_meta(storage, rel)
        if meta is not None:
            out.append(SnapshotInfo(int(m.group(1)), m.group(2), rel, meta))
    return sorted(out, key=lambda s: (s.seq, s.rel))


def read_signal(
    storage: Storage, rel: str, signal: str, columns: Sequence[str] | None = None
) -> pa.Table:
    """The rows of ``signal`` in a snapshot file, reading only the row groups whose
    statistics can hold it (a snapshot's row groups are sorted by signal)."""
    cols = None if columns is None else list(dict.fromkeys(["signal", *columns]))
    with storage.fs.open(storage.path(rel), "rb") as fh:
        pf = pq.ParquetFile(fh)
        at = pf.schema_arrow.get_field_index("signal")
        groups = [
            i for i in range(pf.num_row_groups) if _may_hold(pf.metadata.row_group(i), at, signal)
        ]
        t = pf.read_row_groups(groups, columns=cols)
    return t.filter(pc.equal(t.column("signal"), signal))


def _may_hold(group: pq.RowGroupMetaData, column: int, signal: str) -> bool:
    stats = group.column(column).statistics
    if group.num_rows == 0:
        return False
    if stats is None or not stats.has_min_max:
        return True
    return bool(stats.min <= signal <= stats.max)


class History:
    """The comparable snapshots (taken with the same settings), with their rows loaded on
    demand."""

    def __init__(self, storage: Storage, params_digest: str):
        every = list_snapshots(storage)
        self.storage = storage
        self.snapshots = [s for s in every if s.meta.get("params_digest") == params_digest]
        self.n_other_settings = len(every) - len(self.snapshots)
        self._tables: dict[str, pa.Table] = {}

    @classmethod
    def of(cls, snapshots: Sequence[SnapshotInfo], tables: dict[str, pa.Table]) -> History:
        """A history held in memory (tests, benchmarks)."""
        h = cls.__new__(cls)
        h.snapshots, h._tables, h.n_other_settings = list(snapshots), dict(tables), 0
        return h

    @property
    def latest(self) -> SnapshotInfo | None:
        return self.snapshots[-1] if self.snapshots else None

    def baseline(self, latest: SnapshotInfo) -> SnapshotInfo | None:
        """What ``latest`` is compared with: the last snapshot of the run before its run, else
        (one run so far) the snapshot just before it."""
        before = [s for s in self.snapshots if s.seq < latest.seq]
        other = [s for s in before if s.run_id != latest.run_id]
        if other:
            return other[-1]
        return before[-1] if before else None

    def table(self, info: SnapshotInfo) -> pa.Table:
        """Every row of a snapshot (the criteria read single signals: :meth:`signal`)."""
        if info.rel not in self._tables:
            self._tables[info.rel] = self.storage.read_parquet(info.rel)
        return self._tables[info.rel]

    def signal(
        self, info: SnapshotInfo, signal: str, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The rows of one signal (only the row groups that can hold it are read)."""
        if info.rel in self._tables:
            t = self._tables[info.rel]
            t = t.filter(pc.equal(t.column("signal"), signal))
        else:
            t = read_signal(self.storage, info.rel, signal, columns)
        return t.select(list(columns)) if columns is not None else t

    def joined(
        self, a: SnapshotInfo, b: SnapshotInfo, signal: str, signal_b: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The values of ``signal`` in ``a`` and ``signal_b`` (default: the same) in ``b`` for
        the keys both hold, aligned (in no particular order). Joined by DuckDB on the files,
        in bounded memory (10^7 keys per clustering at 10^7 images)."""
        signal_b = signal_b or signal
        if a.rel in self._tables or b.rel in self._tables:
            left = self.signal(a, signal).select(["key", "value"])
            right = self.signal(b, signal_b).select(["key", "value"])
            j = left.join(right.rename_columns(["key", "value_b"]), "key", join_type="inner")
        else:
            j = self._duckdb_join(a.rel, b.rel, signal, signal_b)
        return (
            j.column("value").to_numpy(zero_copy_only=False),
            j.column("value_b").to_numpy(zero_copy_only=False),
        )

    def _duckdb_join(self, a: str, b: str, signal: str, signal_b: str) -> pa.Table:
        from exokiratory.core.dataset import fetch_arrow

        with tempfile.TemporaryDirectory(prefix="exokiratory-join-") as tmp, _duckdb(tmp) as con:
            if not self.storage.is_local:
                con.register_filesystem(self.storage.fs)
            sql = (
                f"SELECT l.value, r.value AS value_b FROM read_parquet({_quoted(self._url(a))}) l "
                f"JOIN read_parquet({_quoted(self._url(b))}) r ON l.key = r.key "
                "WHERE l.signal = ? AND r.signal = ?"
            )
            return fetch_arrow(con.execute(sql, [signal, signal_b]))

    def _url(self, rel: str) -> str:
        full = self.storage.path(rel)
        return full if self.storage.is_local else str(self.storage.fs.unstrip_protocol(full))

    def keys(self, info: SnapshotInfo, signal: str) -> set[str]:
        return set(self.signal(info, signal, ["signal", "key"]).column("key").to_pylist())

    def changed_by(self, base: SnapshotInfo, signal: str, steps: Sequence[str] = ()) -> str | None:
        """The pass behind the first snapshot after ``base`` whose ``signal`` differs from it:
        the first of ``steps`` that wrote rows earlier in that snapshot's run (new embeddings
        move the clusters derived from them), else the step that triggered it."""
        ref = base.signals.get(signal, {}).get("digest")
        for s in self.snapshots:
            if s.seq > base.seq and s.signals.get(signal, {}).get("digest") != ref:
                wrote = [w for w in s.meta.get("wrote", []) if w in steps]
                if wrote:
                    return str(wrote[0])
                return s.trigger if s.trigger not in ("", "stop") else None
        return None
