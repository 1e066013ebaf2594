from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "camera.png", "chelsea.png")

#: Natural photos shipped with scikit-image, one list for every test that needs real photos
#: (tests take prefixes of it).
NATURAL_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "brick.png",
    "ihc.png",
    "color.png",
    "cell.png",
)


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
