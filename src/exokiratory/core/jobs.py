"""The jobs log (manifests/jobs/): one row per batch run, in one part per run.

A run keeps its rows and rewrites its own part, ``part-<run_id>.parquet`` (atomically), at most
every ``flush_seconds`` (5 s) and when it ends: one file per run however many batches it has,
and a kill loses at most the last few seconds of records. Those are not lost for good: the next
run of the pass finds the parts its log does not name and appends a record for each
(:func:`recover_jobs`: units and errors read from the part, size and time from the file; the
batch's seconds are unknown, so null), so the figures built on the log count every part.
Parts themselves carry no run-specific bytes: the same batch writes byte-identical parts
whatever the executor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from exokiratory.core.dataset import ORIGIN, is_compacted
from exokiratory.core.layout import JOBS
from exokiratory.core.storage import Storage

JOBS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("pass_name", pa.string(), nullable=False),
        pa.field("pass_version", pa.string()),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | failed | skipped
        pa.field("n_units", pa.int64()),
        pa.field("n_errors", pa.int64()),
        pa.field("bytes_written", pa.int64()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("seconds", pa.float64()),
        pa.field("engine", pa.string()),
        pa.field("host", pa.string()),
        pa.field("pid", pa.int64()),
        pa.field("error", pa.string()),
    ]
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass
class JobRecord:
    batch: str
    status: str
    n_units: int
    n_errors: int = 0
    bytes_written: int = 0
    started_at: dt.datetime = field(default_factory=utcnow)
    finished_at: dt.datetime = field(default_factory=utcnow)
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class JobLog:
    def __init__(
        self,
        storage: Storage,
        pass_name: str,
        pass_version: str,
        engine: str,
        run_id: str | None = None,
        flush_seconds: float = 5.0,
    ):
        self.storage = storage
        self.pass_name = pass_name
        self.pass_version = pass_version
        self.engine = engine
        self.run_id = run_id or new_run_id()
        self.flush_seconds = flush_seconds
        self._rows: list[JobRecord] = []
        self._last_flush = time.monotonic()
        self._written = 0

    def add(self, rec: JobRecord) -> None:
        self._rows.append(rec)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Rewrite this run's part with every row so far (nothing to do if none is new)."""
        if len(self._rows) == self._written:
            return
        rows = self._rows
        table = pa.table(
            {
                "run_id": [self.run_id] * len(rows),
                "pass_name": [self.pass_name] * len(rows),
                "pass_version": [self.pass_version] * len(rows),
                "batch": [r.batch for r in rows],
                "status": [r.status for r in rows],
                "n_units": [r.n_units for r in rows],
                "n_errors": [r.n_errors for r in rows],
                "bytes_written": [r.bytes_written for r in rows],
                "started_at": [r.started_at for r in rows],
                "finished_at": [r.finished_at for r in rows],
                "seconds": [(r.finished_at - r.started_at).total_seconds() for r in rows],
                "engine": [self.engine] * len(rows),
                "host": [r.host for r in rows],
                "pid": [r.pid for r in rows],
                "error": [r.error for r in rows],
            },
            schema=JOBS_SCHEMA,
        )
        self.storage.write_parquet_atomic(f"{JOBS}/part-{self.run_id}.parquet", table)
        self._written = len(rows)
        self._last_flush = time.monotonic()


def recover_jobs(storage: Storage, pass_name: str, pass_version: str, output_rel: str) -> int:
    """Append a record for each part of ``output_rel`` that the jobs log does not name (its run
    was killed before it flushed); returns how many. Reads the log's ``batch`` column, the
    ``error`` column of the parts it does not name, and the ``_origin`` column of compacted
    parts; writes one log part, named by its content (a kill and a
    rerun write the same file)."""
    parts = storage.list_files(output_rel, ".parquet")
    if not parts:
        return 0
    known = _logged_batches(storage, pass_name)
    rows: list[dict[str, object]] = []
    missing = []
    for rel in parts:
        if not is_compacted(rel) and rel.rsplit("/", 1)[-1] in known:
            continue  # logged: nothing to read (the common case, on every run's start)
        for batch, n_units, n_errors in _batches_of(storage, rel):
            if batch not in known:  # batch = the name of the part it was written in
                missing.append(batch)
                rows.append(_recovered_row(storage, rel, batch, n_units, n_errors))
    if not missing:
        return 0
    for row in rows:
        row.update(pass_name=pass_name, pass_version=pass_version)
    table = pa.Table.from_pylist(rows, schema=JOBS_SCHEMA)
    digest = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
    storage.write_parquet_atomic(f"{JOBS}/part-recovered-{digest}.parquet", table)
    return len(rows)


def _logged_batches(storage: Storage, pass_name: str) -> set[str]:
    out: set[str] = set()
    for rel in storage.list_files(JOBS, ".parquet"):
        t = storage.read_parquet(rel, columns=["pass_name", "batch"])
        names, batches = t.column("pass_name").to_pylist(), t.column("batch").to_pylist()
        out.update(b for n, b in zip(names, batches, strict=True) if n == pass_name)
    return out


def _batches_of(storage: Storage, rel: str) -> list[tuple[str, int, int]]:
    """``(batch, units, errors)`` of a part: itself, or for a compacted part (core.compact) each
    part its rows came from."""
    name = rel.rsplit("/", 1)[-1]
    if not is_compacted(rel):
        errors = storage.read_parquet(rel, columns=["error"]).column("error")
        return [(name, len(errors), len(errors) - errors.null_count)]
    t = storage.read_parquet(rel, columns=[ORIGIN, "error"])
    out: dict[str, list[int]] = {}
    for origin, err in zip(
        t.column(ORIGIN).to_pylist(), t.column("error").to_pylist(), strict=True
    ):
        counts = out.setdefault(origin, [0, 0])
        counts[0] += 1
        counts[1] += err is not None
    return [(b, n, e) for b, (n, e) in sorted(out.items())]


def _recovered_row(
    storage: Storage, rel: str, batch: str, n_units: int, n_errors: int
) -> dict[str, object]:
    info = storage.fs.info(storage.path(rel))
    mtime = info.get("mtime") or info.get("created")
    finished = (
        mtime
        if isinstance(mtime, dt.datetime)
        else dt.datetime.fromtimestamp(float(mtime), dt.UTC)
        if mtime
        else None
    )
    return {
        "run_id": "recovered",
        "batch": batch,
        "status": "ok",
        "n_units": n_units,
        "n_errors": n_errors,
        "bytes_written": int(info.get("size") or 0) if batch == rel.rsplit("/", 1)[-1] else None,
        "started_at": None,
        "finished_at": finished,
        "seconds": None,
        "engine": None,
        "host": None,
        "pid": None,
        "error": None,
    }
