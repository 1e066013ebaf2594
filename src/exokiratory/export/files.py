"""``files``: a folder tree of the images (symbolic links or copies), for tools that want files.

Each image becomes ``[<group>/]<image_id><ext>`` (``group``: the value of the ``group_by``
column, e.g. ``modality`` or ``stratum``), a symbolic link to the image (``mode="symlink"``,
local images and destination only) or a copy of its bytes (``mode="copy"``; any storage).
Each file is written atomically and skipped when already there, so a rerun completes the tree.
``manifest.parquet`` / ``manifest.csv`` map every ``file`` to its image and columns.
"""

from __future__ import annotations

import os
import uuid

import pyarrow as pa

from exokiratory.core.storage import TMP_PREFIX, Storage
from exokiratory.engine.threads import in_threads
from exokiratory.export.manifest import exported_rows, write_manifest
from exokiratory.export.records import image_file_name, safe_folder
from exokiratory.export.selection import Selection
from exokiratory.export.shards import ImageItem

WRITE_THREADS = 8


class FilesFormat:
    name = "files"

    def __init__(self, mode: str = "symlink", group_by: str | None = None):
        if mode not in ("symlink", "copy"):
            raise ValueError(f"mode must be 'symlink' or 'copy', not {mode!r}")
        self.mode = mode
        self.group_by = group_by
        self.reads = "stat" if mode == "symlink" else "bytes"

    def prepare(self, selection: Selection, out: Storage) -> None:
        if self.group_by is not None and self.group_by not in selection.columns:
            raise ValueError(
                f"group_by {self.group_by!r} is not an exported column; columns: "
                f"{', '.join(selection.columns)}"
            )
        if self.mode == "symlink":
            remote = [p for p in selection.table.column("path").to_pylist()[:1] if "://" in p]
            if remote or not out.is_local:
                raise ValueError(
                    "symbolic links need local images and a local destination: "
                    "use mode='copy' (--copy)"
                )

    def file_rel(self, record: dict[str, object]) -> str:
        name = image_file_name(record)
        if self.group_by is None:
            return name
        return f"{safe_folder(record.get(self.group_by))}/{name}"

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        # files are independent: written by threads, so their fsyncs overlap
        for _ in in_threads(lambda item: self._write_one(out, item), items, WRITE_THREADS):
            pass

    def _write_one(self, out: Storage, item: ImageItem) -> None:
        rel = self.file_rel(item.record)
        full = out.path(rel)
        if os.path.lexists(full) if out.is_local else out.exists(rel):
            return
        if self.mode == "copy":
            out.write_bytes_atomic(rel, item.data or b"")
            return
        os.makedirs(os.path.dirname(full), exist_ok=True)
        tmp = os.path.join(os.path.dirname(full), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        os.symlink(os.path.abspath(item.path), tmp)
        os.replace(tmp, full)

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        table = exported_rows(selection, problems)
        files = [self.file_rel(r) for r in table.to_pylist()]
        write_manifest(out, table.append_column("file", pa.array(files, pa.string())))
