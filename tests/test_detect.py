"""The ``detect`` pass: post-processing on known outputs, queries from the prompt registry,
a tiny random-weight OWLv2 end to end (routing, counts view, thresholds), kill + rerun."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.core.prompts import REGISTRY_FILE
from exokiratory.models.detect import DetectInput
from exokiratory.models.registry import resolve
from exokiratory.passes.detect.boxes import Queries, detections, nms
from exokiratory.passes.detect.step import DetectPass, load_prompt_set, queries_of

from .conftest import skimage_data_dir, table_rows
from .test_kill import _cli, _kill_at, _run_to_end


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_detections_threshold_nms_labels_and_pixels() -> None:
    boxes = np.array(
        [
            [0.10, 0.10, 0.30, 0.30],  # a cat
            [0.11, 0.10, 0.31, 0.30],  # the same cat from the next patch
            [0.60, 0.60, 0.80, 0.90],  # another cat
            [0.40, 0.40, 0.50, 0.50],  # below the threshold
        ]
    )
    q = Queries(["cat", "dog"], ["a photo of a cat", "a cat", "a photo of a dog"], [0, 0, 1])
    logits = np.full((4, 3), _logit(0.01))
    logits[0, 1], logits[1, 0], logits[2, 0], logits[3, 2] = (
        _logit(0.9),
        _logit(0.8),
        _logit(0.5),
        _logit(0.05),
    )
    kw = {"nms_iou": 0.5, "max_detections": 10, "to_pixels": 1000.0, "width": 1000, "height": 750}
    found = detections(boxes, logits, q, score_threshold=0.1, **kw)
    assert [(d["label"], d["query"]) for d in found] == [
        ("cat", "a cat"),
        ("cat", "a photo of a cat"),
    ]
    assert found[0]["score"] == pytest.approx(0.9) and found[0]["x1"] == pytest.approx(300)
    assert found[1]["y1"] == 750  # clipped to the image (the padding is below it)
    assert len(detections(boxes, logits, q, score_threshold=0.01, **kw)) == 6
    assert detections(boxes, logits, q, score_threshold=0.95, **kw) == []
    assert nms(boxes, np.array([0.5, 0.9, 0.1, 0.2]), 0.5) == [1, 3, 2]


def test_queries_come_from_the_versioned_registry(tmp_path: Path) -> None:
    pset = load_prompt_set(None, "detection")
    q = queries_of(pset)
    assert "person" in q.labels and "a photo of a person" in q.texts
    assert len(q.texts) == len(q.label_of) and max(q.label_of) == len(q.labels) - 1
    # a workspace whose registry predates the detection set: the packaged default's is used
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    text = ws.storage.read_bytes(REGISTRY_FILE).decode()
    ws.storage.write_bytes_atomic(REGISTRY_FILE, text.split("  - id: detection")[0].encode())
    assert load_prompt_set(ws.storage.url, "detection").digest == pset.digest
    # an edited set is a new version of the output
    p = DetectPass({"model": "tiny"})
    p.bind_workspace(ws.storage.url)
    before = p.full_version
    edited = text.replace("prompts: [a car]", "prompts: [a car, a truck]")
    ws.storage.write_bytes_atomic(REGISTRY_FILE, edited.encode())
    q = DetectPass({"model": "tiny"})
    q.bind_workspace(ws.storage.url)
    assert before != q.full_version and "detection1+" in q.full_version
    assert "a photo of a truck" in queries_of(q.prompt_set).texts


def test_input_is_padded_bottom_right_then_resized() -> None:
    geo = DetectInput.from_config({"size": {"height": 64, "width": 64}})
    x = geo.pixels(np.zeros((32, 64, 3), np.uint8))
    assert x.shape == (3, 64, 64)
    grey = (0.5 - np.asarray(geo.mean)) / np.asarray(geo.std)
    black = -np.asarray(geo.mean) / np.asarray(geo.std)
    assert np.allclose(x[:, 40:, 10], grey[:, None], atol=1e-5)  # padding below the image
    assert np.allclose(x[:, 5, 10], black, atol=1e-5)
    assert resolve("detect", "lite").model_id == "google/owlv2-base-patch16-ensemble"


def test_detect_pass_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut.png", "grass.png", "gravel.png", "coffee.png", "text.png"):
        shutil.copy(skimage_data_dir() / name, src / name)
    ws = Workspace.init(tmp_path / "ws", [str(src)], run=RunConfig(workers=1))
    ws.config.passes["detect"] = {"model": "tiny", "score_threshold": 0.2, "count_threshold": 0.5}
    ws.scan(progress=False)
    ws.run(["sense", "flags"], progress=False)
    route = DetectPass().params.route
    routed = {
        r["image_id"] for r in ws.sql(f"SELECT image_id FROM flags f WHERE {route}").to_pylist()
    }
    assert 0 < len(routed) < 5  # the dense textures, not the portrait
    (rep,) = ws.run(["detect"], progress=False)
    rows = ws.sql("SELECT * FROM detect").to_pylist()
    assert {r["image_id"] for r in rows} == routed and rep.unit_errors == 0
    labels = queries_of(load_prompt_set(ws.storage.url, "detection")).labels
    for r in rows:
        assert r["model_id"] == "tiny:detect" and r["labels"] == labels
        assert r["score_threshold"] == pytest.approx(0.2) and r["nms_iou"] == pytest.approx(0.5)
        assert r["prompt_set_id"] == "detection" and r["prompt_set_version"].startswith("1+")
        assert r["n_detections"] == len(r["detections"]) <= 100
        assert all(d["score"] >= 0.2 for d in r["detections"])
        scores = [d["score"] for d in r["detections"]]
        assert scores == sorted(scores, reverse=True)
    counts = ws.sql("SELECT * FROM detect_counts").to_pylist()
    assert len(counts) == len(rows) * len(labels)  # zeros included
    for c in counts:
        (r,) = [r for r in rows if r["image_id"] == c["image_id"]]
        want = sum(d["label"] == c["label"] and d["score"] >= 0.5 for d in r["detections"])
        assert c["count"] == want and c["count_threshold"] == pytest.approx(0.5)
    st = {p.name: p for p in ws.status().passes}["detect"]
    assert (st.wanted, st.done, st.failed) == (len(routed), len(routed), 0)


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(7)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (50, 40 + i, 3), np.uint8)).save(src / f"n{i}.png")

    def make(name: str) -> Path:
        from exokiratory.api.colab import configure

        root = tmp_path / name
        ws = Workspace.init(root, [str(src)], run=RunConfig(batch_size=1, workers=1))
        configure(ws, "detect", model="tiny", score_threshold=0.3)
        ws.scan(progress=False)
        return root

    ref, ws = make("ref"), make("ws")
    # every run in a fresh process (same torch threads: float results depend on their number)
    _run_to_end(_cli(ref, "run", "detect", "--all"))
    parts = lambda: len(list((ws / "semantics" / "detect").rglob("*.parquet")))  # noqa: E731
    killed = _kill_at(_cli(ws, "run", "detect", "--all"), 0.1, parts)
    mid = parts()
    _run_to_end(_cli(ws, "run", "detect", "--all"))
    assert killed and 0 < mid < 10, mid
    got, want = Workspace(ws).table("detect"), Workspace(ref).table("detect")
    assert got.num_rows == want.num_rows == 10
    assert table_rows(got) == table_rows(want)
