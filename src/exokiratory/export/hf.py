"""``hf``: a Hugging Face ``datasets`` dataset, as Parquet shards with an ``Image`` feature.

``data/train-<i>-of-<n>.parquet`` (the hub's shard naming), each with an ``image`` column (the
image's bytes and file name: the ``datasets.Image`` feature) and the exported columns; the
features are recorded in the Parquet schema metadata, as ``datasets`` writes them, so::

    datasets.load_dataset("parquet", data_files="DEST/data/*.parquet", split="train")

(or ``load_dataset("DEST")``) gives back the images as PIL images with their columns. Needs the
``export`` extra (``pip install 'exokiratory[export]'``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from exokiratory.core.storage import Storage
from exokiratory.export.records import image_file_name, portable_schema
from exokiratory.export.selection import Selection
from exokiratory.export.shards import ImageItem

IMAGE_COLUMN = "image"


def shard_rel(index: int, n_shards: int) -> str:
    return f"data/train-{index:05d}-of-{n_shards:05d}.parquet"


class HFFormat:
    name = "hf"
    reads = "bytes"

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None

    def prepare(self, selection: Selection, out: Storage) -> None:
        try:
            import datasets
        except ImportError:
            raise RuntimeError(
                "the hf format needs the datasets package: pip install 'exokiratory[export]'"
            ) from None
        if IMAGE_COLUMN in selection.columns:
            raise ValueError(f"a column named {IMAGE_COLUMN!r} would hide the images")
        columns = portable_schema(selection.table.select(selection.columns).schema)
        features = datasets.Features.from_arrow_schema(columns)
        features = datasets.Features({IMAGE_COLUMN: datasets.Image(), **features})
        self.schema = features.arrow_schema

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        if self.schema is None:
            raise RuntimeError("prepare() first")
        rows = [
            {IMAGE_COLUMN: {"bytes": i.data, "path": image_file_name(i.record)}, **i.record}
            for i in items
        ]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        with out.open_atomic(shard_rel(index, n_shards)) as fh:
            pq.write_table(
                table, fh, compression="snappy", row_group_size=100
            )  # images: compressed already

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        return None
