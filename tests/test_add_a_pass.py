"""The worked example of docs/architecture.md: a new pass is one class and one registration.

The class below is what a new family's ``passes/<family>/step.py`` would hold; registering it is
all it takes for ``run``, the catalog view, ``status`` and ``run all`` to know it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import Field

from exokiratory import Workspace
from exokiratory.engine import registry
from exokiratory.engine.step import BatchContext, ImagePass, PassParams


class BrightnessParams(PassParams):
    bins: int = Field(4, ge=2, le=256, description="histogram bins of the grey levels")


class BrightnessPass(ImagePass[BrightnessParams]):
    """Mean grey level and a coarse grey histogram of every image."""

    name = "example-brightness"
    dataset = "features/example-brightness"
    version = "v1"
    stage = 1
    Params = BrightnessParams
    description = "mean grey level and a coarse histogram (the docs' worked example)"

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("image_id", pa.string(), nullable=False),
                pa.field("image_idx", pa.int64(), nullable=False),
                pa.field("mean_grey", pa.float32()),
                pa.field("grey_hist", pa.list_(pa.int64())),
                pa.field("error", pa.string()),
            ]
        )

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        with Image.open(io.BytesIO(unit["data"])) as im:
            grey = np.asarray(im.convert("L"), np.float32)
        hist, _ = np.histogram(grey, bins=self.params.bins, range=(0, 256))
        return {"mean_grey": float(grey.mean()), "grey_hist": hist.tolist()}


@pytest.fixture
def registered() -> Iterator[None]:
    registry.register(BrightnessPass)
    yield
    registry.unregister(BrightnessPass.name)


def test_a_registered_pass_runs_resumes_and_shows(
    registered: None, tmp_path: Path, photos: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.scan(progress=False)
    assert "example-brightness" in [p.name for p in ws.passes(["all"])]
    (first,) = ws.run(["example-brightness"], workers=1, limit=2, progress=False)
    assert first.processed == 2
    (rest,) = ws.run(["example-brightness"], workers=1, progress=False)
    assert rest.already_done == 2 and rest.processed == 3  # resumed, nothing redone
    rows = ws.sql("SELECT image_id, mean_grey, grey_hist FROM example_brightness").to_pylist()
    assert len(rows) == 5 and all(sum(r["grey_hist"]) > 0 for r in rows)
    assert all(0 < r["mean_grey"] < 255 for r in rows)
    status = {p.name: p for p in ws.status().passes}
    assert status["example-brightness"].done == 5


def test_a_bad_parameter_names_the_key(registered: None) -> None:
    with pytest.raises(ValueError, match=r"passes\.example-brightness: bins"):
        registry.get_pass("example-brightness", {"bins": 1})
