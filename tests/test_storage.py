from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from exokiratory.core.dataset import PartDataset
from exokiratory.core.storage import TMP_PREFIX, Storage


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "root")
    return Storage(f"memory://exo-test-{os.getpid()}-{id(request)}")


def test_atomic_write_and_listing(storage: Storage) -> None:
    storage.write_bytes_atomic("a/b/one.parquet", b"x")
    storage.write_bytes_atomic("a/b/two.parquet", b"y")
    assert storage.read_bytes("a/b/one.parquet") == b"x"
    assert storage.list_files("a/b", ".parquet") == ["a/b/one.parquet", "a/b/two.parquet"]
    assert storage.listdir("does/not/exist") == []


def test_temporary_files_are_invisible(tmp_path: Path) -> None:
    s = Storage(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{TMP_PREFIX}abc-part.parquet").write_bytes(b"half")
    s.write_bytes_atomic("d/part.parquet", b"whole")
    assert s.list_files("d", ".parquet") == ["d/part.parquet"]


def test_create_exclusive(storage: Storage) -> None:
    assert storage.create_exclusive("lock", b"1")
    assert not storage.create_exclusive("lock", b"2")
    assert storage.read_bytes("lock") == b"1"


def test_part_dataset_dedupes_and_prefers_success(storage: Storage) -> None:
    schema = pa.schema([("image_id", pa.string()), ("v", pa.int64()), ("error", pa.string())])
    ds = PartDataset(storage, "out", ("image_id",), schema)
    ds.write_part(
        "part-1",
        pa.table({"image_id": ["a", "b"], "v": [None, 2], "error": ["boom", None]}, schema=schema),
    )
    ds.write_part(
        "part-2",
        pa.table({"image_id": ["a", "c"], "v": [1, 3], "error": [None, None]}, schema=schema),
    )
    ds.write_part("part-3", pa.table({"image_id": ["c"], "v": [3], "error": [None]}, schema=schema))
    out = ds.read()
    assert sorted(out.to_pylist(), key=lambda r: r["image_id"]) == [
        {"image_id": "a", "v": 1, "error": None},
        {"image_id": "b", "v": 2, "error": None},
        {"image_id": "c", "v": 3, "error": None},
    ]
    assert ds.read_raw().num_rows == 5
