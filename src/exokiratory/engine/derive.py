"""Running a derivation: fingerprint inputs, compute, write a new folder, move the pointer."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from exokiratory.core.catalog import Catalog
from exokiratory.core.dataset import POINTER, current_folder
from exokiratory.core.jobs import JobLog, JobRecord, utcnow
from exokiratory.core.storage import Storage
from exokiratory.engine.shards import ShardEngine, current_engine, shard_engine
from exokiratory.engine.step import Derivation

log = logging.getLogger(__name__)

ROWS_PER_PART = 1_000_000
#: rows cast at a time where a derived column's type is not its field's (see _write_table)
CAST_ROWS = 65_536
KEEP_PREVIOUS = 1


@dataclass
class DeriveReport:
    name: str
    version: str
    folder: str
    rows: int = 0
    up_to_date: bool = False
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return True

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.name} ({self.version}): up to date ({self.folder}); {self.seconds:.1f}s"
        return f"{self.name} ({self.version}): {self.rows} rows derived into {self.folder}; {self.seconds:.1f}s"


def input_fingerprint(storage: Storage, d: Derivation) -> str:
    h = hashlib.sha256(d.full_version.encode())
    h.update(d.params_json().encode())
    h.update(storage.listing_digest(d.inputs, ".parquet").encode())
    for dataset in d.derived_inputs:  # derivations it reads: their current output folder
        h.update((current_folder(storage, dataset) or "").encode())
    h.update(d.extra_fingerprint(storage).encode())
    return h.hexdigest()[:16]


def run_derivation(
    d: Derivation,
    storage: Storage,
    catalog_factory: Callable[[], Catalog],
    engine: ShardEngine | None = None,
) -> DeriveReport:
    """Compute ``d`` unless its current output already has the same inputs and parameters.
    ``engine``: where its shard work runs (:mod:`.shards`; default: the current one). The
    output does not depend on it."""
    engine = engine or current_engine()
    t0 = time.monotonic()
    folder = f"{d.full_version}-{input_fingerprint(storage, d)}"
    report = DeriveReport(d.name, d.full_version, folder)
    if current_folder(storage, d.dataset) == f"{d.dataset}/{folder}":
        report.up_to_date = True
        report.seconds = time.monotonic() - t0
        return report
    started = utcnow()
    with catalog_factory() as cat, shard_engine(engine.name, engine.address):
        tables = d.derive_outputs(cat)
    schemas = {"": d.output_schema(), **d.extra_schemas()}
    if set(tables) != set(schemas):
        raise RuntimeError(f"{d.name}: derived tables {sorted(tables)} != {sorted(schemas)}")
    n_bytes = 0
    for name, schema in schemas.items():
        sub = f"{d.dataset}/{folder}" + (f"/{name}" if name else "")
        n_bytes += _write_table(storage, sub, tables[name].select(schema.names), schema)
    table = tables[""]
    pointer = {
        "folder": folder,
        "version": d.full_version,
        "params": json.loads(d.params_json()),
        "rows": table.num_rows,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    storage.write_bytes_atomic(f"{d.dataset}/{POINTER}", json.dumps(pointer, indent=1).encode())
    _prune(storage, d.dataset, folder)
    jobs = JobLog(storage, d.name, d.full_version, engine.name)
    jobs.add(JobRecord(folder, "ok", table.num_rows, bytes_written=n_bytes, started_at=started))
    jobs.flush()
    report.rows = table.num_rows
    report.seconds = time.monotonic() - t0
    return report


def _write_table(storage: Storage, folder: str, table: pa.Table, schema: pa.Schema) -> int:
    """``table`` cast to ``schema`` in parts of ``ROWS_PER_PART`` rows. A column of another
    type than its field (e.g. the flags' provenance strings, dictionary-encoded: one string,
    not one copy per row) is cast ``CAST_ROWS`` rows at a time, so it is never whole in its
    plain type (the part's rows are the same; it has one row group per slice)."""
    n_bytes = 0
    same = [f.type for f in table.schema] == [f.type for f in schema]
    for i, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_PART)):
        part = table.slice(start, ROWS_PER_PART)
        rel = f"{folder}/part-{i:05d}.parquet"
        if same:
            n_bytes += storage.write_parquet_atomic(rel, part.cast(schema))
        else:
            data = _parquet_in_slices(part, schema)
            storage.write_bytes_atomic(rel, data)
            n_bytes += len(data)
    return n_bytes


def _parquet_in_slices(table: pa.Table, schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd", write_statistics=True) as writer:
        for start in range(0, table.num_rows, CAST_ROWS):
            writer.write_table(table.slice(start, CAST_ROWS).cast(schema))
    return buf.getvalue()


def _prune(storage: Storage, dataset: str, keep: str) -> None:
    """Remove older output folders, keeping the current one and the newest previous one
    (names starting with ``.`` or ``_`` are not outputs: temporary files, caches)."""
    folders = [
        n
        for n in storage.listdir(dataset)
        if n != POINTER and n != keep and not n.startswith((".", "_"))
    ]
    stale = (
        sorted(folders, key=lambda n: _mtime(storage, f"{dataset}/{n}"))[:-KEEP_PREVIOUS]
        if KEEP_PREVIOUS
        else folders
    )
    for name in stale:
        try:
            storage.fs.rm(storage.path(f"{dataset}/{name}"), recursive=True)
        except OSError as exc:  # pruning is housekeeping; never fail a run for it
            log.warning("could not remove old derived output %s: %s", name, exc)


def _mtime(storage: Storage, rel: str) -> float:
    try:
        info = storage.fs.info(storage.path(rel))
    except OSError:
        return 0.0
    value = info.get("mtime") or info.get("created") or 0.0
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)
