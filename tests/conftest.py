from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from exokiratory.demo.data import SAMPLE_PHOTOS

os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "camera.png", "chelsea.png")

#: Natural photos shipped with scikit-image (plus its synthetic colour chart before the last
#: one), one list for every test that needs real photos (tests take prefixes of it).
NATURAL_PHOTOS = (*SAMPLE_PHOTOS[:14], "color.png", SAMPLE_PHOTOS[14])


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A small folder of real photos shipped with scikit-image."""
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    data = skimage_data_dir()
    for i, name in enumerate(SKIMAGE_PHOTOS):
        dest = src / ("sub" if i % 2 else ".") / name
        shutil.copy(data / name, dest)
    return src


def table_rows(table, drop=()):  # type: ignore[no-untyped-def]
    """Rows of an Arrow table as sorted tuples, without the named (e.g. time) columns."""
    keep = [c for c in table.column_names if c not in drop]
    rows = table.select(keep).to_pylist()
    return sorted(tuple(r.values()) for r in rows)
