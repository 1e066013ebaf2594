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


#: Test files by total time, longest first (seconds of a full run on 2 loaded cores: demo 428,
#: notebooks 228, captions 227, genprobe 176, ocr 137, ... down to about 40). They run first:
#: with ``--dist loadfile --no-loadscope-reorder`` (the README's test command) pytest-xdist hands
#: out files in collection order, so no long file starts near the end while the other worker
#: idles. (xdist's default order, most tests first, starts the 2-test demo file last.)
LONGEST_FIRST = (
    "test_demo.py",
    "test_notebooks.py",
    "test_captions.py",
    "test_genprobe.py",
    "test_ocr.py",
    "test_detect.py",
    "test_segment.py",
    "test_first_hour.py",
    "test_ray_cluster.py",
    "test_kill.py",
    "test_compact.py",
    "test_depth.py",
    "test_s3.py",
    "test_embed.py",
    "test_pass1.py",
    "test_report.py",
    "test_runner.py",
    "test_segment_embed.py",
    "test_export.py",
    "test_corpus.py",
    "test_report_honesty.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of :data:`LONGEST_FIRST` first, in that order; the tests of a file and the
    other files keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
