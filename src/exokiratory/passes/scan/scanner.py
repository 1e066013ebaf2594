"""PASS 0: scan sources into the frozen manifest.

Top-down: :meth:`Scanner.run` takes the scan lock, walks every source, plans the files to read
(new paths, or paths whose size or modification time changed, or that errored last time), reads
and hashes them in committed batches, then marks vanished paths missing.

Restart safety: each batch commits the new image registrations first (one part, named by its idx
range), then the path rows (one part). A kill between the two leaves images whose paths are not
recorded; the rerun reads those files again, finds their IDs registered, and writes only the
paths. ``image_idx`` continues from the largest committed one, in the same sorted path order as an
uninterrupted run, so a killed-and-resumed scan ends with the same tables.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from exokiratory.core.catalog import Catalog
from exokiratory.core.config import Source, WorkspaceConfig
from exokiratory.core.jobs import JobLog, JobRecord, utcnow
from exokiratory.core.layout import IMAGES, PATHS, SCAN_LOCK
from exokiratory.core.lock import LeaseLock
from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA
from exokiratory.core.progress import progress_bar
from exokiratory.core.storage import Storage
from exokiratory.passes.scan.inspect import FileInfo, inspect_file
from exokiratory.passes.scan.walk import Entry, SourceUnavailable, walk_source

log = logging.getLogger(__name__)


@dataclass
class ScanReport:
    """What a scan did. Printed by the CLI as its summary line."""

    files_seen: int = 0
    unchanged: int = 0
    inspected: int = 0
    bytes_read: int = 0
    new_images: int = 0
    known_content: int = 0
    unreadable: int = 0
    ignored: int = 0
    errors: int = 0
    missing: int = 0
    batches: int = 0
    seconds: float = 0.0
    unavailable_sources: list[str] = field(default_factory=list)
    folder_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"scan: {self.files_seen} files seen, {self.unchanged} unchanged, {self.inspected} read "
            f"({self.bytes_read / 1e6:.1f} MB), {self.new_images} new images, "
            f"{self.known_content} paths with known content (exact duplicates or moves), "
            f"{self.unreadable} unreadable, {self.ignored} non-images ignored, {self.errors} "
            f"errors, {self.missing} newly missing, in {self.seconds:.1f}s"
        )


@dataclass(frozen=True)
class _Planned:
    entry: Entry
    source: str


class Scanner:
    def __init__(
        self,
        storage: Storage,
        config: WorkspaceConfig,
        *,
        progress: bool | None = None,
        force_lock: bool = False,
        batch_hook: Callable[[int], None] | None = None,
    ):
        self.storage = storage
        self.config = config
        self.progress = progress
        self.force_lock = force_lock
        self.batch_hook = batch_hook
        self.report = ScanReport()
        self.scan_started = utcnow()
        self._complete_sources: set[str] = set()

    # -- top level ---------------------------------------------------------------------------
    def run(self) -> ScanReport:
        if not self.config.sources:
            raise ValueError("no sources configured: add one with `exokiratory init --source DIR`")
        t0 = time.monotonic()
        lock = LeaseLock(self.storage, SCAN_LOCK, self.config.scan.lock_ttl_seconds, "scan")
        lock.acquire(force=self.force_lock)
        jobs = JobLog(self.storage, "scan", "pass0-v1", "local")
        try:
            walked = self._walk_all()
            with Catalog(self.storage) as cat:
                current = cat.query(
                    "SELECT path, source, size_bytes, mtime_ns, status, image_id, error FROM paths"
                )
                registry = cat.query("SELECT image_id, image_idx FROM images_registry")
                todo = self._plan(walked, current, cat.con)
            self._process(todo, registry, jobs)
            self._mark_missing(walked, current, jobs)
        finally:
            jobs.flush()
            lock.release()
        self.report.seconds = time.monotonic() - t0
        return self.report

    # -- walking -----------------------------------------------------------------------------
    def _walk_all(self) -> dict[str, list[Entry] | None]:
        """Entries per source; ``None`` for a source that is unavailable (nothing is marked)."""
        out: dict[str, list[Entry] | None] = {}
        exclude = (self.storage.root,) if self.storage.is_local else ()
        with progress_bar("scan: listing", None, self.progress) as advance:
            for src in self.config.sources:
                self._walk_one(src, out, exclude, advance)
        return out

    def _walk_one(
        self,
        src: Source,
        out: dict[str, list[Entry] | None],
        exclude: tuple[str, ...],
        advance: Callable[[int], None],
    ) -> None:
        """Walk one source into ``out`` (``None`` when it is unavailable: nothing is marked)."""
        key = normalise_source(src.path)
        try:
            res = walk_source(
                src.path,
                src.storage_options,
                follow_symlinks=self.config.scan.follow_symlinks,
                include_hidden=self.config.scan.include_hidden,
                exclude=exclude,
                on_folder=advance,
            )
        except SourceUnavailable as exc:
            log.warning("%s; its paths are left as they were", exc)
            self.report.unavailable_sources.append(key)
            out[key] = None
            return
        for err in res.folder_errors:
            log.warning("%s", err)
        self.report.folder_errors.extend(res.folder_errors)
        out[key] = res.entries
        if res.complete:
            self._complete_sources.add(key)
        self.report.files_seen += len(res.entries)

    # -- planning ----------------------------------------------------------------------------
    def _plan(
        self,
        walked: dict[str, list[Entry] | None],
        current: pa.Table,
        con: duckdb.DuckDBPyConnection,
    ) -> list[_Planned]:
        rows = [
            (src, e.path, e.size, e.mtime_ns, e.error)
            for src, entries in walked.items()
            if entries
            for e in entries
        ]
        listing = pa.table(
            {
                "source": pa.array([r[0] for r in rows], pa.string()),
                "path": pa.array([r[1] for r in rows], pa.string()),
                "size_bytes": pa.array([r[2] for r in rows], pa.int64()),
                "mtime_ns": pa.array([r[3] for r in rows], pa.int64()),
                "walk_error": pa.array([r[4] for r in rows], pa.string()),
                "ord": pa.array(range(len(rows)), pa.int64()),
            }
        )
        con.register("listing", listing)
        con.register("cur", current)
        try:
            changed = con.execute(
                """
                SELECT l.source, l.path, l.size_bytes, l.mtime_ns, l.walk_error FROM listing l
                LEFT JOIN cur c ON c.path = l.path
                WHERE c.path IS NULL OR c.status IN ('error', 'missing') OR l.walk_error IS NOT NULL
                   OR c.size_bytes IS DISTINCT FROM l.size_bytes
                   OR c.mtime_ns IS DISTINCT FROM l.mtime_ns
                ORDER BY l.ord
                """
            ).fetchall()
        finally:
            con.unregister("listing")
            con.unregister("cur")
        self.report.unchanged = len(rows) - len(changed)
        return [_Planned(Entry(p, s, m, err), src) for src, p, s, m, err in changed]

    # -- reading -----------------------------------------------------------------------------
    def _process(self, todo: list[_Planned], registry: pa.Table, jobs: JobLog) -> None:
        known: dict[str, int] = dict(
            zip(
                registry.column("image_id").to_pylist(),
                registry.column("image_idx").to_pylist(),
                strict=True,
            )
        )
        next_idx = max(known.values(), default=-1) + 1
        cfg = self.config.scan
        fs_by_source = {
            normalise_source(s.path): _source_fs(s.path, s.storage_options)
            for s in self.config.sources
        }
        total_bytes = sum(p.entry.size or 0 for p in todo)
        with (
            ThreadPoolExecutor(max_workers=cfg.hash_workers, thread_name_prefix="exo-hash") as pool,
            progress_bar("scan: hashing", total_bytes or None, self.progress) as advance,
        ):
            for b, batch in enumerate(_chunks(todo, cfg.batch_size)):
                started = utcnow()

                def work(p: _Planned) -> FileInfo:
                    if p.entry.error is not None:
                        return FileInfo("error", error=p.entry.error)
                    return inspect_file(p.entry.path, fs_by_source[p.source], cfg.max_image_pixels)

                infos = list(pool.map(work, batch))
                next_idx, n_bytes = self._commit(batch, infos, known, next_idx)
                advance(sum(p.entry.size or 0 for p in batch))
                jobs.add(
                    JobRecord(
                        batch=f"scan-{b:06d}",
                        status="ok",
                        n_units=len(batch),
                        n_errors=sum(1 for i in infos if i.kind == "error"),
                        bytes_written=n_bytes,
                        started_at=started,
                    )
                )
                self.report.batches += 1
                if self.batch_hook is not None:
                    self.batch_hook(b)

    def _commit(
        self,
        batch: Sequence[_Planned],
        infos: Sequence[FileInfo],
        known: dict[str, int],
        next_idx: int,
    ) -> tuple[int, int]:
        now = utcnow()
        new_rows: list[dict[str, Any]] = []
        path_rows: list[dict[str, Any]] = []
        for planned, info in zip(batch, infos, strict=True):
            self.report.inspected += 1
            self.report.bytes_read += info.size or 0
            image_id = info.image_id
            if info.kind == "image" and image_id is not None:
                if image_id in known:
                    self.report.known_content += 1
                else:
                    known[image_id] = next_idx
                    new_rows.append(_image_row(image_id, next_idx, info, planned.entry.path, now))
                    next_idx += 1
                    self.report.new_images += 1
                    self.report.unreadable += info.status == "unreadable"
            elif info.kind == "ignored":
                self.report.ignored += 1
            else:
                self.report.errors += 1
            path_rows.append(
                {
                    "path": planned.entry.path,
                    "source": planned.source,
                    "image_id": image_id,
                    "size_bytes": info.size if info.size is not None else planned.entry.size,
                    "mtime_ns": planned.entry.mtime_ns,
                    "status": info.kind,
                    "error": info.error if info.kind != "image" else None,
                    "seen_at": now,
                }
            )
        n_bytes = 0
        if new_rows:
            first, last = new_rows[0]["image_idx"], new_rows[-1]["image_idx"]
            table = pa.Table.from_pylist(new_rows, schema=IMAGES_SCHEMA)
            n_bytes += self.storage.write_parquet_atomic(
                f"{IMAGES}/part-{first:012d}-{last:012d}.parquet", table
            )
        if path_rows:
            n_bytes += self._write_paths(path_rows)
        return next_idx, n_bytes

    def _write_paths(self, rows: list[dict[str, Any]]) -> int:
        return self._write_paths_table(pa.Table.from_pylist(rows, schema=PATHS_SCHEMA))

    def _write_paths_table(self, table: pa.Table) -> int:
        stamp = self.scan_started.strftime("%Y%m%dT%H%M%S%f")
        name = f"{PATHS}/part-{stamp}-{time.time_ns()}-{os.getpid()}.parquet"
        return self.storage.write_parquet_atomic(name, table)

    # -- vanished files ----------------------------------------------------------------------
    def _mark_missing(
        self, walked: dict[str, list[Entry] | None], current: pa.Table, jobs: JobLog
    ) -> None:
        """Paths recorded as present under a fully walked source but not walked now."""
        present = pa.array(
            sorted(e.path for entries in walked.values() if entries for e in entries), pa.string()
        )
        keep = pc.and_(
            pc.and_(
                pc.not_equal(current["status"], "missing"),
                pc.invert(pc.is_in(current["path"], value_set=present)),
            ),
            pc.is_in(
                current["source"], value_set=pa.array(sorted(self._complete_sources), pa.string())
            ),
        )
        gone = current.filter(keep)
        n = gone.num_rows
        table = pa.table(
            {
                "path": gone["path"],
                "source": gone["source"],
                "image_id": gone["image_id"],
                "size_bytes": gone["size_bytes"],
                "mtime_ns": gone["mtime_ns"],
                "status": pa.array(["missing"] * n, pa.string()),
                "error": pa.nulls(n, pa.string()),
                "seen_at": pa.array([utcnow()] * n, pa.timestamp("us", tz="UTC")),
            },
            schema=PATHS_SCHEMA,
        )
        chunk = max(self.config.scan.batch_size, 10000)
        for start in range(0, n, chunk):
            part = table.slice(start, chunk)
            written = self._write_paths_table(part)
            jobs.add(
                JobRecord(
                    batch="scan-missing", status="ok", n_units=part.num_rows, bytes_written=written
                )
            )
        self.report.missing = n


def _image_row(
    image_id: str, idx: int, info: FileInfo, path: str, now: dt.datetime
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "image_idx": idx,
        "sha256": info.sha256,
        "size_bytes": info.size,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "first_path": path,
        "registered_at": now,
        "status": info.status,
        "error": info.error,
    }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def normalise_source(path: str) -> str:
    """The canonical text of a source: an absolute local path, or the full URL."""
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(root)
    return str(fs.unstrip_protocol(root.rstrip("/")))


def _source_fs(path: str, options: dict[str, Any]) -> Any | None:
    fs, _ = fsspec.core.url_to_fs(path, **options)
    return None if isinstance(fs, LocalFileSystem) else fs
