"""Walking sources: every file below a folder or URL, with size and modification time.

Local walks use ``os.scandir`` (one ``stat`` per file, no reads). Symbolic links to folders are
followed when asked, with loop detection by (device, inode); broken links and unreadable folders
become entries with an ``error`` instead of exceptions. Remote walks use fsspec's ``find``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from exokiratory.core.paths import to_stored

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file found by a walk. ``error`` is set when the file cannot be used at all."""

    path: str
    size: int | None
    mtime_ns: int | None
    error: str | None = None


@dataclass
class WalkResult:
    entries: list[Entry]
    folder_errors: list[str]
    complete: bool


class SourceUnavailable(RuntimeError):
    """A source root does not exist or cannot be listed (e.g. Drive not mounted)."""


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


def _walk_local(
    root: str,
    follow: bool,
    include_hidden: bool,
    exclude: tuple[str, ...],
    on_folder: Callable[[int], None] | None = None,
) -> WalkResult:
    entries: list[Entry] = []
    folder_errors: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    st = os.stat(root)
    seen_dirs.add((st.st_dev, st.st_ino))
    stack = [root]
    excluded = {os.path.abspath(e) for e in exclude}
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                items = list(it)
        except OSError as exc:
            folder_errors.append(f"{folder}: cannot list folder: {exc.strerror or exc}")
            continue
        for item in items:
            if not include_hidden and item.name.startswith("."):
                continue
            if item.path in excluded:
                continue
            _visit(item, follow, stack, seen_dirs, entries)
        if on_folder is not None:
            on_folder(len(items))
    # names that are not UTF-8 are stored losslessly in an escaped form (core.paths)
    entries = [dataclasses.replace(e, path=to_stored(e.path)) for e in entries]
    entries.sort(key=lambda e: e.path)
    return WalkResult(entries, folder_errors, complete=not folder_errors)


def _visit(
    item: os.DirEntry[str],
    follow: bool,
    stack: list[str],
    seen_dirs: set[tuple[int, int]],
    entries: list[Entry],
) -> None:
    is_link = item.is_symlink()
    if is_link and not follow:
        return
    try:
        st = item.stat(follow_symlinks=True)
    except FileNotFoundError:
        if is_link:
            target = os.readlink(item.path)
            entries.append(Entry(item.path, None, None, f"broken symbolic link -> {target}"))
        return  # a file removed while we walk simply is not there
    except OSError as exc:
        entries.append(Entry(item.path, None, None, f"cannot stat: {exc.strerror or exc}"))
        return
    if stat_mod.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            log.warning("skipping a folder already visited (a symlink loop?): %s", item.path)
            return
        seen_dirs.add(key)
        stack.append(item.path)
    elif stat_mod.S_ISREG(st.st_mode):
        entries.append(Entry(item.path, st.st_size, st.st_mtime_ns))
    else:  # a FIFO, socket or device: never opened (a read could block forever)
        entries.append(Entry(item.path, None, None, f"not a regular file: {_kind(st.st_mode)}"))


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
    entries = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(root) :].lstrip("/")
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        entries.append(
            Entry(fs.unstrip_protocol(path), int(info.get("size") or 0), _mtime_ns(info))
        )
    entries.sort(key=lambda e: e.path)
    return WalkResult(entries, [], complete=True)


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
