"""``fiftyone``: a FiftyOne dataset of the exported images, to look at in the FiftyOne App.

Optional: only when the ``fiftyone`` package is installed (it brings its own database server);
without it the format says how to get it and exports nothing. The dataset (persistent, named
``dataset_name``, by default the destination folder's name) holds one sample per image: its
``filepath`` (the image itself, not a copy) and every exported column as a field; embedding
columns (lists of numbers) become vector fields. The destination folder keeps the export's
state and log. Each shard's samples carry ``exo_shard``: a rerun after a kill first deletes the
samples of the shard it redoes, so no sample is added twice.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
from typing import Any

import pyarrow as pa

from exokiratory.core.storage import Storage
from exokiratory.export.selection import Selection
from exokiratory.export.shards import ImageItem

SHARD_FIELD = "exo_shard"
#: FiftyOne's own sample fields: exported columns of these names get a ``exo_`` prefix
RESERVED = frozenset({"id", "filepath", "tags", "metadata", "media_type", "_id", "_media_type"})


def fiftyone_available() -> bool:
    return importlib.util.find_spec("fiftyone") is not None


def _field(name: str) -> str:
    return f"exo_{name}" if name in RESERVED else name


class FiftyOneFormat:
    name = "fiftyone"
    reads = "stat"

    def __init__(self, dataset_name: str | None = None):
        self.dataset_name = dataset_name
        self._dataset: Any = None

    def prepare(self, selection: Selection, out: Storage) -> None:
        if not fiftyone_available():
            raise RuntimeError(
                "the fiftyone format needs FiftyOne: pip install fiftyone (not installed here)"
            )
        if any("://" in p for p in selection.table.column("path").to_pylist()[:1]):
            raise ValueError("FiftyOne shows local images: export --to files --copy first")

    def dataset(self, out: Storage) -> Any:
        if self._dataset is None:
            import fiftyone as fo

            name = self.dataset_name or posixpath.basename(out.root.rstrip("/"))
            if fo.dataset_exists(name):
                self._dataset = fo.load_dataset(name)
            else:
                self._dataset = fo.Dataset(name, persistent=True)
        return self._dataset

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        import fiftyone as fo
        import numpy as np
        from fiftyone import ViewField as F

        ds = self.dataset(out)
        if SHARD_FIELD in ds.get_field_schema():
            ds.delete_samples(ds.match(F(SHARD_FIELD) == index))  # a redone shard
        samples = []
        for item in items:
            fields: dict[str, Any] = {SHARD_FIELD: index}
            for k, v in item.record.items():
                if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
                    v = np.asarray(v, np.float32)
                fields[_field(k)] = v
            samples.append(fo.Sample(filepath=os.path.abspath(item.path), **fields))
        if samples:
            ds.add_samples(samples, progress=False)

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        if self._dataset is not None:
            self._dataset.info["exokiratory"] = {"selection": selection.label}
            self._dataset.save()
