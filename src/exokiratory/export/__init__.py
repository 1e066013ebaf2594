"""Export: hand a sample (or any SQL selection of images) to the tools people train and label
with, resume-safe, in few large writes, with a progress bar.

Formats (one module each): ``manifest`` (Parquet + CSV), ``files`` (a tree of symbolic links or
copies, optionally grouped by a column), ``hf`` (Hugging Face ``datasets`` Parquet shards with an
``Image`` feature), ``webdataset`` (tar shards), ``fiftyone`` (a FiftyOne dataset, when FiftyOne
is installed). The selection is :mod:`exokiratory.export.selection`; the shard runner, kill-safe
resume and the export log are :mod:`exokiratory.export.shards`. The destination is any local
path, mounted Drive folder or fsspec URL (bucket), written through
:class:`~exokiratory.core.storage.Storage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exokiratory.core.catalog import Catalog
from exokiratory.core.storage import Storage
from exokiratory.engine.step import BatchContext
from exokiratory.export.selection import select
from exokiratory.export.shards import ExportReport, Format, run_export

FORMATS = ("manifest", "files", "hf", "webdataset", "fiftyone")
#: columns a FiftyOne export carries when none are named: flags, clusters, captions, embeddings
FIFTYONE_DEFAULT_COLUMNS = (
    "is_*",
    "modality",
    "cluster_*",
    "caption*",
    "embeddings_clip.embedding",
    "embeddings_dino.embedding",
)
#: images per shard by format (manifest shards only check that files exist)
SHARD_IMAGES = {"manifest": 10_000, "files": 1000, "hf": 1000, "webdataset": 1000, "fiftyone": 1000}


def make_format(
    to: str, *, mode: str = "symlink", group_by: str | None = None, dataset_name: str | None = None
) -> Format:
    if to == "manifest":
        from exokiratory.export.manifest import ManifestFormat

        return ManifestFormat()
    if to == "files":
        from exokiratory.export.files import FilesFormat

        return FilesFormat(mode, group_by)
    if to == "hf":
        from exokiratory.export.hf import HFFormat

        return HFFormat()
    if to == "webdataset":
        from exokiratory.export.webdataset import WebDatasetFormat

        return WebDatasetFormat()
    if to == "fiftyone":
        from exokiratory.export.fiftyone import FiftyOneFormat

        return FiftyOneFormat(dataset_name)
    raise ValueError(f"unknown export format {to!r}; formats: {', '.join(FORMATS)}")


def export(
    catalog: Catalog,
    ctx: BatchContext,
    dest: str,
    *,
    to: str,
    sample: str | None = None,
    where: str | None = None,
    columns: Sequence[str] = (),
    group_by: str | None = None,
    mode: str = "symlink",
    dataset_name: str | None = None,
    shard_images: int | None = None,
    shard_bytes: int = 512 * 2**20,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> ExportReport:
    """Export a sample (``NAME`` or ``NAME@VERSION``) or the images of ``where`` to ``dest``
    in format ``to`` (see the module docstring)."""
    fmt = make_format(to, mode=mode, group_by=group_by, dataset_name=dataset_name)
    wanted = [*columns, *([group_by] if group_by and group_by not in columns else [])]
    optional = FIFTYONE_DEFAULT_COLUMNS if to == "fiftyone" and not columns else ()
    selection = select(
        catalog, sample=sample, where=where, columns=wanted, optional_columns=optional
    )
    out = Storage(dest, storage_options)
    extra = {"mode": mode, "group_by": group_by} if to == "files" else {}
    return run_export(
        fmt,
        selection,
        out,
        ctx,
        shard_images=shard_images or SHARD_IMAGES[to],
        shard_bytes=shard_bytes,
        progress=progress,
        extra_spec=extra,
    )


__all__ = ["FORMATS", "ExportReport", "export", "make_format"]
