"""Walking sources: every file below a folder or URL, with size and modification time.

Local walks use ``os.scandir`` (one ``stat`` per file, no reads). Symbolic links to folders are
followed when asked, with loop detection by (device, inode); broken links and unreadable folders
become entries with an ``error`` instead of exceptions. Remote walks use fsspec's ``find``.

A walk's result is columnar: entries are gathered into Arrow record batches of
:data:`CHUNK_ROWS` (so the Python objects alive at any time are bounded, not one per file) and
returned as one Arrow table sorted by path (:data:`LISTING_SCHEMA`), about the bytes of the
paths plus ~30 bytes a file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from exokiratory.core.paths import to_stored

log = logging.getLogger(__name__)

#: entries gathered as Python values before they become one Arrow record batch
CHUNK_ROWS = 65_536

#: one row per file found: the stored path, its size and modification time (null when it cannot
#: be used at all), and ``walk_error`` saying why it cannot (a broken link, a FIFO...)
LISTING_SCHEMA = pa.schema(
    [
        pa.field("path", pa.large_string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("walk_error", pa.large_string()),
    ]
)


@dataclass
class WalkResult:
    """``listing``: :data:`LISTING_SCHEMA` rows sorted by path, one chunk per column."""

    listing: pa.Table
    folder_errors: list[str]
    complete: bool


class SourceUnavailable(RuntimeError):
    """A source root does not exist or cannot be listed (e.g. Drive not mounted)."""


class ListingBuilder:
    """Entries appended one at a time, kept as Arrow record batches of :data:`CHUNK_ROWS`."""

    def __init__(self, chunk_rows: int | None = None) -> None:
        self.chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
        if self.chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        self._paths: list[str] = []
        self._sizes: list[int | None] = []
        self._mtimes: list[int | None] = []
        self._errors: list[str | None] = []
        self._batches: list[pa.RecordBatch] = []

    def add(
        self, path: str, size: int | None, mtime_ns: int | None, error: str | None = None
    ) -> None:
        self._paths.append(path)
        self._sizes.append(size)
        self._mtimes.append(mtime_ns)
        self._errors.append(error)
        if len(self._paths) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._paths:
            return
        arrays = [
            pa.array(col, f.type)
            for col, f in zip(
                (self._paths, self._sizes, self._mtimes, self._errors), LISTING_SCHEMA, strict=True
            )
        ]
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=LISTING_SCHEMA))
        self._paths, self._sizes, self._mtimes, self._errors = [], [], [], []

    def sorted_table(self) -> pa.Table:
        """Every entry, sorted by path (byte order of UTF-8 = code point order, as ``sorted``)."""
        self._flush()
        table = pa.Table.from_batches(self._batches, schema=LISTING_SCHEMA)
        self._batches = []
        if table.num_rows == 0:
            return LISTING_SCHEMA.empty_table()
        order = pc.sort_indices(table["path"])
        columns = []
        for name in LISTING_SCHEMA.names:  # one column at a time: the unsorted one is dropped
            columns.append(table[name].take(order).combine_chunks())
            table = table.drop_columns([name])
        release_arrow_memory()
        return pa.Table.from_arrays(columns, schema=LISTING_SCHEMA)


def release_arrow_memory() -> None:
    """Give the memory Arrow freed back to the system: its allocator keeps freed pages (the
    unsorted listing and the sort's copies, ~1.5x the listing) that DuckDB cannot reuse."""
    pa.default_memory_pool().release_unused()


def walk_source(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    follow_symlinks: bool = True,
    include_hidden: bool = False,
    exclude: tuple[str, ...] = (),
    on_folder: Callable[[int], None] | None = None,
) -> WalkResult:
    """List every file below ``url``. Raises :class:`SourceUnavailable` if the root is absent.
    ``on_folder(n)`` is called after each local folder with the number of its entries."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise SourceUnavailable(f"source folder does not exist or is not a folder: {root}")
        return _walk_local(root, follow_symlinks, include_hidden, exclude, on_folder)
    if not fs.isdir(root):
        raise SourceUnavailable(f"source does not exist or is not a folder: {url}")
    return _walk_fsspec(fs, root, include_hidden)


@dataclass
class _LocalWalk:
    """The state of one local walk: folders to list, folders seen, what was found."""

    follow: bool
    include_hidden: bool
    excluded: set[str]
    found: ListingBuilder
    stack: list[str]
    seen_dirs: set[tuple[int, int]]
    folder_errors: list[str]


def _walk_local(
    root: str,
    follow: bool,
    include_hidden: bool,
    exclude: tuple[str, ...],
    on_folder: Callable[[int], None] | None = None,
) -> WalkResult:
    st = os.stat(root)
    walk = _LocalWalk(
        follow,
        include_hidden,
        {os.path.abspath(e) for e in exclude},
        ListingBuilder(),
        [root],
        {(st.st_dev, st.st_ino)},
        [],
    )
    while walk.stack:
        n = _list_folder(walk, walk.stack.pop())
        if n is not None and on_folder is not None:
            on_folder(n)
    return WalkResult(walk.found.sorted_table(), walk.folder_errors, not walk.folder_errors)


def _list_folder(walk: _LocalWalk, folder: str) -> int | None:
    """Visit the entries of one folder (streamed: a flat folder of 10^7 files holds no list of
    them); the number of entries, or None when the folder cannot be listed (a folder error)."""
    n = 0
    try:
        with os.scandir(folder) as it:
            for item in it:
                n += 1
                if not walk.include_hidden and item.name.startswith("."):
                    continue
                if item.path in walk.excluded:
                    continue
                _visit(item, walk)
    except OSError as exc:
        walk.folder_errors.append(f"{folder}: cannot list folder: {exc.strerror or exc}")
        return None
    return n


def _visit(item: os.DirEntry[str], walk: _LocalWalk) -> None:
    is_link = item.is_symlink()
    if is_link and not walk.follow:
        return
    # names that are not UTF-8 are stored losslessly in an escaped form (core.paths)
    path = to_stored(item.path)
    try:
        st = item.stat(follow_symlinks=True)
    except FileNotFoundError:
        if is_link:
            target = os.readlink(item.path)
            walk.found.add(path, None, None, f"broken symbolic link -> {target}")
        return  # a file removed while we walk simply is not there
    except OSError as exc:
        walk.found.add(path, None, None, f"cannot stat: {exc.strerror or exc}")
        return
    if stat_mod.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in walk.seen_dirs:
            log.warning("skipping a folder already visited (a symlink loop?): %s", item.path)
            return
        walk.seen_dirs.add(key)
        walk.stack.append(item.path)
    elif stat_mod.S_ISREG(st.st_mode):
        walk.found.add(path, st.st_size, st.st_mtime_ns)
    else:  # a FIFO, socket or device: never opened (a read could block forever)
        walk.found.add(path, None, None, f"not a regular file: {_kind(st.st_mode)}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat_mod.S_ISFIFO, "named pipe (FIFO)"),
        (stat_mod.S_ISSOCK, "socket"),
        (stat_mod.S_ISCHR, "character device"),
        (stat_mod.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _walk_fsspec(fs: fsspec.AbstractFileSystem, root: str, include_hidden: bool) -> WalkResult:
    found = fs.find(root, detail=True)
    out = ListingBuilder()
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(root) :].lstrip("/")
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        out.add(fs.unstrip_protocol(path), int(info.get("size") or 0), _mtime_ns(info))
    del found
    return WalkResult(out.sorted_table(), [], complete=True)


def _mtime_ns(info: dict[str, Any]) -> int | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "mtime_ns"):
        value = info.get(key)
        if value is None:
            continue
        if key == "mtime_ns":
            return int(value)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return int(value.timestamp() * 1e9)
        if isinstance(value, int | float):
            return int(float(value) * 1e9)
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return int(parsed.timestamp() * 1e9)
    return None
