"""The jobs log (manifests/jobs/): one row per batch run, flushed in few, large parts.

Rows are buffered and written as one part every ``flush_seconds`` and when the run ends, so a
run of thousands of batches does not write thousands of tiny files. A killed run loses at most the
unflushed log rows, never data: progress is always read from the output parts themselves.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

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
