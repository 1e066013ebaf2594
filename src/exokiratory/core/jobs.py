"""The jobs log (manifests/jobs/): one row per batch run, flushed in few, large parts.

Rows are buffered and written as one part every ``flush_seconds`` and when the run ends, so a
run of thousands of batches does not write thousands of tiny files. Each batch's record is also
written durably, with no extra file: inside the footer of the part the batch wrote (Parquet
key-value metadata ``exokiratory.job``, part of the same atomic write). A run killed before it
flushed its log loses no record: the next run of the pass finds the parts that the log does not
name and appends their records (:func:`recover_jobs`, one log part, reading only those footers).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

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
        flush_seconds: float = 60.0,
    ):
        self.storage = storage
        self.pass_name = pass_name
        self.pass_version = pass_version
        self.engine = engine
        self.run_id = run_id or new_run_id()
        self.flush_seconds = flush_seconds
        self._rows: list[JobRecord] = []
        self._last_flush = time.monotonic()
        self._flushes = 0

    def add(self, rec: JobRecord) -> None:
        self._rows.append(rec)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
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
        name = f"{JOBS}/part-{self.run_id}-{self._flushes:05d}.parquet"
        self.storage.write_parquet_atomic(name, table)
        self._flushes += 1
        self._rows = []
        self._last_flush = time.monotonic()


#: key of the job record in a part's Parquet footer
JOB_META_KEY = "exokiratory.job"


def job_metadata(
    rec: JobRecord, pass_name: str, pass_version: str, engine: str, run_id: str | None
) -> dict[str, str]:
    """The footer metadata that carries one batch's record (see the module docstring)."""
    return {
        JOB_META_KEY: json.dumps(
            {
                "run_id": run_id or "",
                "pass_name": pass_name,
                "pass_version": pass_version,
                "engine": engine,
                "batch": rec.batch,
                "status": rec.status,
                "n_units": rec.n_units,
                "n_errors": rec.n_errors,
                "started_at": rec.started_at.isoformat(),
                "finished_at": rec.finished_at.isoformat(),
                "host": rec.host,
                "pid": rec.pid,
            }
        )
    }


def recover_jobs(storage: Storage, pass_name: str, output_rel: str) -> int:
    """Append the records of the parts of ``output_rel`` that the jobs log does not name (their
    run was killed before it flushed); returns how many. Reads the log's ``batch`` column and
    only the footers of those parts; writes one log part, named by its content (a kill and a
    rerun write the same file)."""
    parts = storage.list_files(output_rel, ".parquet")
    if not parts:
        return 0
    known = _logged_batches(storage, pass_name)
    missing = [p for p in parts if p.rsplit("/", 1)[-1] not in known]  # batch = part file name
    records = [r for r in (_footer_record(storage, p) for p in missing) if r is not None]
    if not records:
        return 0
    table = pa.Table.from_pylist([_row(r, storage, p) for r, p in records], schema=JOBS_SCHEMA)
    digest = hashlib.sha256("\n".join(p for _r, p in records).encode()).hexdigest()[:16]
    storage.write_parquet_atomic(f"{JOBS}/part-recovered-{digest}.parquet", table)
    return len(records)


def _logged_batches(storage: Storage, pass_name: str) -> set[str]:
    out: set[str] = set()
    for rel in storage.list_files(JOBS, ".parquet"):
        t = storage.read_parquet(rel, columns=["pass_name", "batch"])
        names = t.column("pass_name").to_pylist()
        out.update(
            b for n, b in zip(names, t.column("batch").to_pylist(), strict=True) if n == pass_name
        )
    return out


def _footer_record(storage: Storage, rel: str) -> tuple[dict[str, object], str] | None:
    with storage.fs.open(storage.path(rel), "rb") as fh:
        meta = pq.read_schema(fh).metadata or {}
    raw = meta.get(JOB_META_KEY.encode())
    return (json.loads(raw), rel) if raw else None


def _row(rec: dict[str, object], storage: Storage, rel: str) -> dict[str, object]:
    started = dt.datetime.fromisoformat(str(rec["started_at"]))
    finished = dt.datetime.fromisoformat(str(rec["finished_at"]))
    return {
        **{k: rec[k] for k in ("run_id", "pass_name", "pass_version", "batch", "status")},
        **{k: rec[k] for k in ("n_units", "n_errors", "engine", "host", "pid")},
        "bytes_written": int(storage.fs.size(storage.path(rel)) or 0),
        "started_at": started,
        "finished_at": finished,
        "seconds": (finished - started).total_seconds(),
        "error": None,
    }
