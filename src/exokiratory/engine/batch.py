"""The batch function every executor runs: compute rows for a batch, then write its part."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import pyarrow as pa

from exokiratory.core.dataset import PartDataset
from exokiratory.core.jobs import JobRecord, utcnow
from exokiratory.core.storage import Storage
from exokiratory.engine.planner import Batch
from exokiratory.engine.step import BatchContext, Pass, PassSetupError

log = logging.getLogger(__name__)


class OutputContractError(RuntimeError):
    """A pass returned a table that breaks the output record contract."""


@dataclass(frozen=True)
class BatchResult:
    record: JobRecord


def limit_native_threads() -> None:
    """One BLAS/OpenMP thread per worker: the executor already runs one worker per core, and
    nested thread pools (OpenBLAS starts one thread per core in every process) oversubscribe
    the CPU. Measured: 2 workers ran PASS 1 slower than 1 before this."""
    global _THREADS_LIMITED
    if _THREADS_LIMITED:
        return
    _THREADS_LIMITED = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread pool
        return
    threadpool_limits(1)


_THREADS_LIMITED = False


def run_batch(p: Pass, ctx: BatchContext, batch: Batch) -> BatchResult:
    """Process one batch and write its part atomically. Safe to call twice for the same batch."""
    limit_native_threads()
    started = utcnow()
    storage = Storage(ctx.workspace_url, ctx.storage_options)
    # no schema here: compute_batch casts to p.output_schema() as it is after the batch ran (a
    # model pass learns its embedding size once its model is loaded)
    ds = PartDataset(storage, p.output_rel, p.key)
    if not batch.overwrite and ds.part_exists(batch.name):
        return BatchResult(JobRecord(batch.name, "skipped", batch.n_units, started_at=started))
    table = compute_batch(p, ctx, batch.units)
    n_errors = int(table.column("error").is_valid().to_numpy(zero_copy_only=False).sum())
    rec = JobRecord(
        batch.name,
        "ok",
        batch.n_units,
        n_errors=n_errors,
        started_at=started,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    rec.bytes_written = ds.write_part(batch.name, table)
    return BatchResult(rec)


def compute_batch(p: Pass, ctx: BatchContext, units: pa.Table) -> pa.Table:
    """Rows for a batch; if the batch function fails as a whole, isolate units one by one."""
    try:
        table = p.process_batch(units, ctx)
    except PassSetupError:
        raise
    except Exception as exc:
        log.warning(
            "%s: batch failed (%s); retrying its %d units one by one", p.name, exc, units.num_rows
        )
        table = pa.concat_tables([_one(p, ctx, units.slice(i, 1)) for i in range(units.num_rows)])
    return check_output(p, units, table)


def _one(p: Pass, ctx: BatchContext, unit: pa.Table) -> pa.Table:
    try:
        return p.process_batch(unit, ctx)
    except Exception as exc:
        return p.error_rows(unit, f"{type(exc).__name__}: {exc}")


def check_output(p: Pass, units: pa.Table, table: pa.Table) -> pa.Table:
    schema = p.output_schema()
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise OutputContractError(f"{p.name}: output lacks columns {missing}")
    table = table.select(schema.names).cast(schema)
    want = set(zip(*(units.column(k).to_pylist() for k in p.units_key), strict=True))
    got_units = set(zip(*(table.column(k).to_pylist() for k in p.units_key), strict=True))
    got = list(zip(*(table.column(k).to_pylist() for k in p.key), strict=True))
    if len(got) != len(set(got)) or got_units != want:
        raise OutputContractError(
            f"{p.name}: output keys do not match the batch's units one to one "
            f"({len(got)} rows for {len(got_units)} of {len(want)} units)"
        )
    return table
