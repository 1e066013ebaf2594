"""The resumable export runner shared by every format.

The selection is cut into shards deterministically (at most ``shard_images`` images and about
``shard_bytes`` bytes each, from the sizes recorded at scan time), so a rerun cuts the same
shards. For each shard not yet done the runner reads its images (threads), hands them to the
format, which writes the shard's output atomically under a deterministic name (temporary name
then rename, or one put on an object store), then records the shard's problem rows (a vanished or
unreadable image) as ``.exokiratory/log/<shard>.parquet``: that file marks the shard done. A run
killed at any instant leaves whole shards or none; the rerun redoes only the missing ones and
rewrites identical bytes, so the folder ends as an uninterrupted run leaves it. At the end the
logs are gathered into ``export_log.csv`` and the format writes its closing files.

``.exokiratory/export.json`` records what the folder holds (format, selection digest, shard
cut): resuming into a folder holding another export is an error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv

from exokiratory.core.progress import progress_bar
from exokiratory.core.storage import TMP_PREFIX, Storage
from exokiratory.engine.step import BatchContext
from exokiratory.engine.threads import in_threads
from exokiratory.export.selection import Selection

log = logging.getLogger(__name__)

STATE = ".exokiratory"
SPEC_FILE = f"{STATE}/export.json"
LOG_DIR = f"{STATE}/log"
LOG_CSV = "export_log.csv"

LOG_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.int32()),
        pa.field("image_id", pa.string()),
        pa.field("path", pa.string()),
        pa.field("problem", pa.string()),  # missing (vanished since the scan) | unreadable
        pa.field("error", pa.string()),
    ]
)


@dataclass
class ImageItem:
    """One record of a shard: its exported values, and its bytes when the format wants them."""

    record: dict[str, Any]
    path: str
    data: bytes | None = None
    problem: str | None = None
    error: str | None = None


class Format(Protocol):
    """What a format implements (one module per format under :mod:`exokiratory.export`)."""

    name: str
    #: "bytes": read each image; "stat": only check that it exists
    reads: str

    def prepare(self, selection: Selection, out: Storage) -> None:
        """Called once before the shards (column types, checks)."""
        ...

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        """Write shard ``index`` (the items that could be read) atomically, idempotently."""
        ...

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        """Closing files (a manifest...) once every shard is done."""
        ...


@dataclass
class ExportReport:
    format: str
    dest: str
    label: str
    n_selected: int
    n_exported: int
    n_problems: int
    shards: int
    shards_written: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_exported / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (
            f"export {self.format} of {self.label}: {self.n_exported} of {self.n_selected} images "
            f"to {self.dest} ({self.shards} shard(s), {self.shards_written} written this run; "
            f"{self.seconds:.1f}s)"
        )
        if self.n_problems:
            s += f"; {self.n_problems} vanished or unreadable: see {LOG_CSV}"
        return "\n".join([s, *(f"note: {n}" for n in self.notes)])


def plan_shards(sizes: list[int], max_images: int, max_bytes: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges: consecutive rows, at most ``max_images`` each, closed when
    they reach ``max_bytes``."""
    out, start, acc = [], 0, 0
    for i, s in enumerate(sizes):
        acc += max(int(s or 0), 0)
        if i + 1 - start >= max_images or acc >= max_bytes:
            out.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def _remove_stale_temporaries(out: Storage) -> None:
    """Temporary files a killed run left in a local destination (never our committed files)."""
    if not out.is_local or not os.path.isdir(out.root):
        return
    for folder, _dirs, files in os.walk(out.root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(folder, name))


def _options(ctx: BatchContext, path: str, source: str | None) -> dict[str, Any]:
    opts = ctx.source_options.get(source or "", {})
    if not opts:
        for src, o in ctx.source_options.items():
            if path.startswith(src.rstrip("/") + "/"):
                return o
    return opts


def fetch(
    ctx: BatchContext, reads: str, columns: list[str]
) -> Callable[[dict[str, Any]], ImageItem]:
    """A function from a selection row to an :class:`ImageItem` (bytes or existence)."""

    def one(row: dict[str, Any]) -> ImageItem:
        path = str(row["path"])
        item = ImageItem(record={c: row[c] for c in columns}, path=path)
        local = "://" not in path and not _options(ctx, path, row.get("source"))
        try:
            if reads == "bytes":
                if local:  # the plain file API: much cheaper per file than an fsspec open
                    with open(path, "rb") as fh:
                        item.data = fh.read()
                else:
                    item.data = ctx.read_bytes(path, row.get("source"))
            elif local:
                if not os.path.exists(path):
                    raise FileNotFoundError(path)
            else:
                fs, p = fsspec.core.url_to_fs(path, **_options(ctx, path, row.get("source")))
                if not fs.exists(p):
                    raise FileNotFoundError(path)
        except FileNotFoundError as exc:
            item.problem, item.error = "missing", f"vanished since the scan: {exc}"
        except OSError as exc:
            item.problem, item.error = "unreadable", f"{type(exc).__name__}: {exc}"
        return item

    return one


def _check_spec(out: Storage, spec: dict[str, Any]) -> None:
    if out.exists(SPEC_FILE):
        held = json.loads(out.read_bytes(SPEC_FILE))
        if held != spec:
            raise ValueError(
                f"{out.url} holds another export ({held.get('format')} of "
                f"{held.get('label')}, {held.get('n_images')} images): export to an empty folder"
            )
        return
    out.write_bytes_atomic(SPEC_FILE, json.dumps(spec, indent=1, sort_keys=True).encode())


def _log_rel(index: int) -> str:
    return f"{LOG_DIR}/shard-{index:06d}.parquet"


def _problems(index: int, items: list[ImageItem]) -> pa.Table:
    bad = [i for i in items if i.problem]
    return pa.Table.from_pylist(
        [
            {
                "shard": index,
                "image_id": i.record["image_id"],
                "path": i.path,
                "problem": i.problem,
                "error": i.error,
            }
            for i in bad
        ],
        schema=LOG_SCHEMA,
    )


def run_export(
    fmt: Format,
    selection: Selection,
    out: Storage,
    ctx: BatchContext,
    *,
    shard_images: int = 1000,
    shard_bytes: int = 512 * 2**20,
    threads: int = 8,
    progress: bool | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> ExportReport:
    """Export ``selection`` to ``out`` with ``fmt`` (see the module docstring)."""
    t0 = time.monotonic()
    table = selection.table
    ranges = plan_shards(table.column("size_bytes").to_pylist(), shard_images, shard_bytes)
    spec = {
        "format": fmt.name,
        "label": selection.label,
        "n_images": table.num_rows,
        "selection": selection.digest,
        "shards": len(ranges),
        "shard_images": shard_images,
        "shard_bytes": shard_bytes,
        **(extra_spec or {}),
    }
    fmt.prepare(selection, out)
    _remove_stale_temporaries(out)
    _check_spec(out, spec)
    written = 0
    one = fetch(ctx, fmt.reads, selection.columns)
    with progress_bar(f"export {fmt.name}", table.num_rows, progress) as advance:
        for index, (start, stop) in enumerate(ranges):
            if out.exists(_log_rel(index)):
                advance(stop - start)
                continue
            rows = table.slice(start, stop - start).to_pylist()
            items = list(in_threads(one, rows, threads))
            fmt.write_shard(out, index, len(ranges), [i for i in items if not i.problem])
            out.write_parquet_atomic(_log_rel(index), _problems(index, items))
            written += 1
            advance(stop - start)
    problems = _gather_problems(out, len(ranges))
    _write_log_csv(out, problems)
    fmt.finish(out, selection, problems)
    return ExportReport(
        format=fmt.name,
        dest=out.url,
        label=selection.label,
        n_selected=table.num_rows,
        n_exported=table.num_rows - problems.num_rows,
        n_problems=problems.num_rows,
        shards=len(ranges),
        shards_written=written,
        seconds=time.monotonic() - t0,
    )


def _gather_problems(out: Storage, n_shards: int) -> pa.Table:
    parts = [out.read_parquet(_log_rel(i)) for i in range(n_shards)]
    return pa.concat_tables([LOG_SCHEMA.empty_table(), *parts]).cast(LOG_SCHEMA)


def _write_log_csv(out: Storage, problems: pa.Table) -> None:
    with out.open_atomic(LOG_CSV) as fh:
        pacsv.write_csv(problems, fh)
