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

The signals: ``cluster:<space>:<level>`` (key image_id, value cluster id), ``stability:<space>:
<level>`` (key cluster id, score its bootstrap stability), ``motif:<space>`` (key segment_id,
value motif id), ``outlier:<set>`` (key image_id, value rank), ``caption`` (key caption_id),
``vocab`` (key a distinctive word, value its caption count), ``caption_basis`` (key the
component, vector the PCA axis).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Sequence
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


def write_snapshot(
    storage: Storage,
    table: pa.Table,
    metrics: dict[str, Any],
    *,
    params_digest: str,
    trigger: str,
    run_id: str,
    wrote: Sequence[str] = (),
) -> SnapshotInfo | None:
    """Store a snapshot unless there is no structure yet or the newest stored snapshot holds
    the same (then None)."""
    if table.num_rows == 0 and not metrics:
        return None
    table = table.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
    table = table.sort_by([("signal", "ascending"), ("key", "ascending")])
    signals = signal_digests(table)
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
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, default=str)})
    storage.write_parquet_atomic(rel, table)
    log.info("structure snapshot %s recorded after %s", rel, trigger)
    return SnapshotInfo(seq, digest, rel, meta)


def new_run_id() -> str:
    import uuid

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
        if info.rel not in self._tables:
            self._tables[info.rel] = self.storage.read_parquet(info.rel)
        return self._tables[info.rel]

    def signal(self, info: SnapshotInfo, signal: str) -> pa.Table:
        t = self.table(info)
        return t.filter(pc.equal(t.column("signal"), signal))

    def joined(
        self, a: SnapshotInfo, b: SnapshotInfo, signal: str, signal_b: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The values of ``signal`` in ``a`` and ``signal_b`` (default: the same) in ``b`` for
        the keys both hold, aligned."""
        left = self.signal(a, signal).select(["key", "value"])
        right = self.signal(b, signal_b or signal).select(["key", "value"])
        j = left.join(right.rename_columns(["key", "value_b"]), "key", join_type="inner")
        return (
            j.column("value").to_numpy(zero_copy_only=False),
            j.column("value_b").to_numpy(zero_copy_only=False),
        )

    def keys(self, info: SnapshotInfo, signal: str) -> set[str]:
        return set(self.signal(info, signal).column("key").to_pylist())

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
