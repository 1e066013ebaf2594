"""``webdataset``: tar shards in the WebDataset layout that large-scale training loaders read.

``shard-<i>.tar`` holds, per image, ``<image_id>.<ext>`` (the image's bytes, unchanged) and
``<image_id>.json`` (the exported columns), next to each other, in export order. Tar headers
carry no time, owner or permissions of the machine, so the same export gives the same bytes.
Read it with ``webdataset.WebDataset("DEST/shard-{000000..000009}.tar")`` (or ``tarfile``).
"""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa

from exokiratory.core.storage import Storage
from exokiratory.export.records import dumps, extension
from exokiratory.export.selection import Selection
from exokiratory.export.shards import ImageItem


def shard_rel(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class WebDatasetFormat:
    name = "webdataset"
    reads = "bytes"

    def prepare(self, selection: Selection, out: Storage) -> None:
        return None

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        with (
            out.open_atomic(shard_rel(index)) as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for item in items:
                key = str(item.record["image_id"])
                ext = extension(item.path, item.record.get("format"))
                _add(tar, f"{key}{ext}", item.data or b"")
                _add(tar, f"{key}.json", dumps(item.record).encode("utf-8"))

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        return None
