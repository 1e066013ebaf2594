"""Storage: a thin layer over fsspec for a workspace root (local path, mounted Drive, or URL).

All writes of data files are atomic: on a local file system the bytes go to a temporary name in the
same folder and are renamed into place (``os.replace``); on an object store or other fsspec file
system they are sent with a single put, which those stores commit whole or not at all. A part file
is therefore either complete or absent, whatever instant the process dies at.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = ".tmp-"


class StorageError(RuntimeError):
    """A workspace storage operation failed in a way the user must fix."""


class Storage:
    """A workspace root on any fsspec file system. Paths given to methods are relative to it."""

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        root = os.fspath(root)
        fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else self.fs.unstrip_protocol(self.root)
        self.storage_options = dict(storage_options or {})

    # -- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Absolute path (in the file system's own terms) of a relative workspace path."""
        rel = posixpath.join(*parts) if parts else ""
        if self.is_local:
            return os.path.join(self.root, *rel.split("/")) if rel else self.root
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the entries of a folder; empty when it does not exist."""
        full = self.path(rel)
        if self.is_local:
            try:
                return sorted(os.listdir(full))
            except FileNotFoundError:
                return []
        try:
            entries = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of the committed files of a folder (temporary files are skipped)."""
        return [
            f"{rel}/{name}"
            for name in self.listdir(rel)
            if name.endswith(suffix) and not name.startswith(TMP_PREFIX)
        ]

    def walk_files(self, rel: str, suffix: str = "") -> Iterator[str]:
        """Relative paths of every committed file below a folder, recursively, sorted."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return
        found = self.fs.find(base)
        prefix = self.path("")
        for full in sorted(found):
            full = str(full)
            name = posixpath.basename(full.replace(os.sep, "/"))
            if name.startswith(TMP_PREFIX) or not name.endswith(suffix):
                continue
            relp = os.path.relpath(full, prefix) if self.is_local else full[len(prefix) + 1 :]
            yield relp.replace(os.sep, "/")

    def listing_digest(self, rels: Sequence[str], suffix: str = "") -> str:
        """A digest of the committed file names below ``rels``: it changes whenever a part is
        added or removed (part names are unique per content or per write)."""
        h = hashlib.sha256()
        for rel in rels:
            for name in self.walk_files(rel, suffix):
                h.update(name.encode())
                h.update(b"\0")
        return h.hexdigest()

    # -- bytes -------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as fh:
            data: bytes = fh.read()
        return data

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see either the old state or the complete file."""
        full = self.path(rel)
        if self.is_local:
            folder = os.path.dirname(full)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(full)}")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, full)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        parent = posixpath.dirname(full)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(full, data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create a file only if absent. Atomic on local file systems, best effort elsewhere."""
        full = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            try:
                fd = os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        if self.fs.exists(full):
            return False
        self.write_bytes_atomic(rel, data)
        return True

    def remove(self, rel: str) -> None:
        """Delete a file; one already gone (a racing process removed it) is not an error."""
        full = self.path(rel)
        try:
            if self.is_local:
                os.unlink(full)
            elif self.fs.exists(full):
                self.fs.rm(full)
        except FileNotFoundError:
            pass

    def file_sizes(self, rel: str, suffix: str = "") -> list[tuple[str, int]]:
        """``(relative path, bytes)`` of the committed files of a folder, in name order (one
        listing call on an object store)."""
        full = self.path(rel)
        if self.is_local:
            out = []
            for name in self.listdir(rel):
                if name.endswith(suffix) and not name.startswith(TMP_PREFIX):
                    try:
                        out.append((f"{rel}/{name}", os.stat(os.path.join(full, name)).st_size))
                    except FileNotFoundError:  # removed since the listing
                        continue
            return out
        try:
            entries = self.fs.ls(full, detail=True)
        except FileNotFoundError:
            return []
        found = []
        for e in entries:
            name = posixpath.basename(str(e["name"]).rstrip("/"))
            is_part = name.endswith(suffix) and not name.startswith(TMP_PREFIX)
            if e.get("type") != "directory" and is_part:
                found.append((f"{rel}/{name}", int(e.get("size") or 0)))
        return sorted(found)

    # -- parquet -----------------------------------------------------------------------------
    def write_parquet_atomic(self, rel: str, table: pa.Table) -> int:
        """Write one Parquet file atomically; returns its size in bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_statistics=True)
        data = buf.getvalue()
        self.write_bytes_atomic(rel, data)
        return len(data)

    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file handle whose content appears at ``rel`` whole, or not at all (a
        temporary name in the same folder renamed into place, or on an object store a local
        temporary file sent with one put): a large file is written without being held."""
        full = self.path(rel)
        folder = os.path.dirname(full) if self.is_local else tempfile.gettempdir()
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(full)}")
        # mode 0o666 less the umask, as open() gives (mkstemp's 0o600 hid files from others)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            if self.is_local:
                os.replace(tmp, full)
            else:
                parent = posixpath.dirname(full)
                if parent:
                    self.fs.makedirs(parent, exist_ok=True)
                self.fs.put_file(tmp, full)  # one put: object stores commit it whole
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_parquet_stream(
        self,
        rel: str,
        schema: pa.Schema,
        parts: Iterable[pa.Table | pa.RecordBatch],
        row_group_size: int | None = None,
    ) -> int:
        """Write one Parquet file from a stream of tables or batches, whole or absent, in
        bounded memory (:meth:`open_atomic`); returns its size in bytes."""
        with self.open_atomic(rel) as fh:
            with pq.ParquetWriter(fh, schema, compression="zstd", write_statistics=True) as w:
                for part in parts:
                    t = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
                    w.write_table(t, row_group_size=row_group_size)
            return int(fh.tell())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"
