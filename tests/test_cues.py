"""The ``cues`` pass: rapidocr's shipped DB text detector and dlib's HOG face detector (compiled
into the dlib-bin wheel; OpenCV's shipped Haar cascade on request)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
pytest.importorskip("rapidocr")
pytest.importorskip("dlib")

from exokiratory import Workspace
from exokiratory.core.decode import load_working_image
from exokiratory.passes.cues import faces, text
from exokiratory.passes.cues.step import CuesPass

from .conftest import NATURAL_PHOTOS, skimage_data_dir


def _page(lines: int = 20, size: tuple[int, int] = (800, 1000)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    for i in range(lines):
        draw.text(
            (40, 40 + 45 * i), f"The quick brown fox jumps over the lazy dog {i}", "black", font
        )
    return img


def _rgb(path: Path) -> np.ndarray:
    return load_working_image(path.read_bytes(), working_size=960).rgb


def test_the_text_model_is_the_file_shipped_in_the_wheel() -> None:
    import rapidocr

    path = text.shipped_model_path()
    assert path.is_file() and path.suffix == ".onnx" and "det" in path.name
    assert Path(rapidocr.__file__).parent in path.parents
    assert text.detector_id().startswith("rapidocr-")
    assert faces.cascade_path().name == faces.CASCADE


def test_text_detector_finds_the_lines_of_a_rendered_page() -> None:
    det = text.get_text_detector()
    cues = det.cues(np.asarray(_page(20)))
    assert 15 <= cues.n_text_boxes <= 25  # one box per line (rarely split)
    assert 0.15 < cues.text_area_fraction < 0.6
    assert cues.text_box_score_mean is not None and cues.text_box_score_mean > 0.6
    assert cues.text_box_height_median is not None and cues.text_box_height_median < 0.05
    blank = det.cues(np.full((600, 800, 3), 255, np.uint8))
    assert blank == text.TextCues(0, 0.0, None, None)


def test_text_detector_is_quiet_on_natural_photos() -> None:
    det = text.get_text_detector()
    for name in NATURAL_PHOTOS[:6]:
        cues = det.cues(_rgb(skimage_data_dir() / name))
        assert cues.n_text_boxes <= 1, name
        assert cues.text_area_fraction < 0.04, name


def test_face_detector_finds_the_astronaut_and_nothing_in_other_scenes() -> None:
    det = faces.get_face_detector()
    rects = det.rects(_rgb(skimage_data_dir() / "astronaut.png"))
    assert len(rects) == 1
    x, y, w, h = rects[0]
    cx, cy = x + w / 2, y + h / 2
    assert 180 < cx < 270 and 70 < cy < 160  # Eileen Collins' face, 512 x 512 image
    cues = det.cues(_rgb(skimage_data_dir() / "astronaut.png"))
    assert cues.n_faces == 1 and 0.02 < cues.max_face_fraction == cues.face_area_fraction < 0.1
    for name in ("chelsea.png", "rocket.jpg", "coffee.png", "coins.png", "grass.png"):
        assert det.cues(_rgb(skimage_data_dir() / name)).n_faces == 0, name
    assert det.cues(np.zeros((300, 400, 3), np.uint8)) == faces.FaceCues(0, 0.0, 0.0)
    assert det.cues(np.zeros((5, 4, 3), np.uint8)).n_faces == 0  # smaller than a face


def test_the_default_face_model_is_dlib_hog_and_the_haar_cascade_stays_available() -> None:
    import dlib

    assert faces.DEFAULT_FACE_MODEL == "dlib-hog" and CuesPass().params.face_model == "dlib-hog"
    assert faces.detector_id() == f"dlib-{dlib.__version__}/frontal_face_hog"
    assert faces.detector_id("haar-alt2").endswith("/haarcascade_frontalface_alt2")
    haar = faces.get_face_detector(model="haar-alt2")
    assert haar is not faces.get_face_detector() and haar is faces.get_face_detector(
        faces.FaceSettings(model="haar-alt2")
    )
    assert haar.cues(_rgb(skimage_data_dir() / "astronaut.png")).n_faces == 1
    with pytest.raises(ValueError, match="unknown face model"):
        faces.FaceDetector(faces.FaceSettings(model="yunet"))  # type: ignore[arg-type]


def test_face_detector_precision_and_recall_on_lfw_crops() -> None:
    """scikit-image's lfw_subset: 100 face crops, 100 non-face crops (25 px, upscaled)."""
    import skimage.data

    det = faces.get_face_detector()
    found = []
    for arr in skimage.data.lfw_subset():
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).resize((150, 150))
        found.append(det.cues(np.asarray(img.convert("RGB"))).n_faces > 0)
    assert sum(found[:100]) >= 80  # 84 measured (bench/human_cue.py; Haar alt2: 86)
    assert sum(found[100:]) == 0  # no face in any of the non-face crops


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cues")
    src = root / "src"
    src.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copy(skimage_data_dir() / name, src / name)
    _page(20).save(src / "page.png")
    _page(24, (1600, 2000)).convert("L").save(src / "page_grey.jpg", quality=90)
    w = Workspace.init(root / "ws", [str(src)])
    w.scan()
    w.run(["sense", "cues", "flags"], workers=1)
    return w


def _by_name(ws: Workspace, view: str) -> dict[str, dict]:  # type: ignore[type-arg]
    rows = ws.sql(
        f"SELECT regexp_extract(i.first_path, '[^/]+$') AS name, v.* FROM {view} v "
        "JOIN images i USING (image_id)"
    ).to_pylist()
    return {r["name"]: r for r in rows}


def test_cues_pass_rows(ws: Workspace) -> None:
    rows = _by_name(ws, "cues")
    assert set(rows) == {"astronaut.png", "chelsea.png", "page.png", "page_grey.jpg"}
    assert all(r["error"] is None for r in rows.values())
    assert rows["astronaut.png"]["n_faces"] == 1 and rows["chelsea.png"]["n_faces"] == 0
    assert rows["page.png"]["n_text_boxes"] >= 15 and rows["page_grey.jpg"]["n_text_boxes"] >= 15
    assert rows["chelsea.png"]["n_text_boxes"] == 0
    assert {r["text_detector"] for r in rows.values()} == {text.detector_id()}
    assert {r["face_detector"] for r in rows.values()} == {faces.detector_id()}
    assert ws.run(["cues"])[0].planned == 0  # type: ignore[union-attr]


def test_flags_use_the_cues(ws: Workspace) -> None:
    flags = _by_name(ws, "flags")
    assert {r["semantic_inputs"] for r in flags.values()} == {"pass1+cues"}
    assert flags["astronaut.png"]["is_human_present"] is True
    assert flags["chelsea.png"]["is_human_present"] is False
    assert flags["page.png"]["is_text_heavy"] and flags["page_grey.jpg"]["is_text_heavy"]
    assert flags["page.png"]["modality"] == "scan"
    assert flags["chelsea.png"]["modality"] == flags["astronaut.png"]["modality"] == "photo"


def test_in_run_all_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    p = CuesPass()
    assert p.missing_requirement() is None and p.in_all(False)
    import exokiratory.passes.cues as cues_pkg

    monkeypatch.setattr(cues_pkg, "CUES_REQUIREMENTS", ("cv2", "no_such_detector_module"))
    assert "exokiratory[cues]" in (p.missing_requirement() or "")
    assert "no_such_detector_module" in (p.missing_requirement() or "")
    assert not p.in_all(True)
