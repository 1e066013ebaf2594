"""The ``ocr`` pass: rapidocr's shipped models on rendered pages, Tesseract when installed,
routing over the flags, the text-confirmed view, full-text search, bad input, kill + rerun."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("onnxruntime")
pytest.importorskip("rapidocr")
pytest.importorskip("cv2")

from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.passes.ocr import engines
from exokiratory.passes.ocr import text as ocr_text
from exokiratory.passes.ocr.engines import OcrLine
from exokiratory.passes.ocr.search import search_ocr
from exokiratory.passes.ocr.step import OcrParams, OcrPass

from .conftest import skimage_data_dir, table_rows
from .test_kill import _cli, _kill_at, _run_to_end

LINES = (
    "Invoice number 4711 for the garden",
    "Seven green bottles on the wall",
    "Payment due within thirty days",
)


def _page(
    lines: tuple[str, ...] = LINES, size: tuple[int, int] = (640, 200), scale: int = 1
) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=24 * scale)
    for i, line in enumerate(lines):
        draw.text((20 * scale, (20 + 50 * i) * scale), line, "black", font)
    return img


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def test_rapidocr_reads_a_rendered_page_with_its_shipped_models() -> None:
    engine = engines.get_engine("rapidocr")
    assert engine.engine_id.startswith("rapidocr-") and "det" in engine.engine_id
    models = engines.rapidocr_models()
    assert all(p.is_file() and p.suffix == ".onnx" for p in models.values())
    lines = engine.read(np.asarray(_page()))
    got = _words(ocr_text.full_text(lines))
    want = _words(" ".join(LINES))
    assert len(got & want) >= 0.9 * len(want), got
    assert all(0.5 <= ln.confidence <= 1 for ln in lines)
    for ln in lines:  # boxes inside the page, in reading order
        x0, y0, x1, y1 = ln.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 200
    assert [ln.box[1] for ln in lines] == sorted(ln.box[1] for ln in lines)
    assert engine.read(np.full((120, 300, 3), 255, np.uint8)) == []  # blank: no lines
    assert engine.read(np.zeros((4, 300, 3), np.uint8)) == []  # a sliver


def test_text_columns() -> None:
    a = OcrLine("1", 0.9, (10, 10, 20, 30))
    b = OcrLine("Introduction", 0.95, (40, 12, 200, 31))
    c = OcrLine("Next line here", 0.99, (10, 40, 200, 60))
    assert ocr_text.full_text([a, b, c]) == "1 Introduction\nNext line here"
    assert ocr_text.full_text([]) == ""
    assert ocr_text.n_chars("a b\nc") == 3
    # words of confident lines only; stripes read as junk count nothing
    assert ocr_text.word_chars([c]) == len("Nextlinehere")
    junk = [
        OcrLine("IIIII ||| 1111 - l", 0.95, (0, 0, 5, 5)),
        OcrLine("real words", 0.3, (0, 0, 1, 1)),
    ]
    assert ocr_text.word_chars(junk) == 0
    assert ocr_text.text_area_fraction([a], 40, 40) == pytest.approx(10 * 20 / 1600)
    assert ocr_text.mean_confidence([a, b]) == pytest.approx(0.925)


def test_tesseract_lines_group_words_into_its_lines() -> None:
    data = {
        "level": [5, 5, 5, 4, 5],
        "page_num": [1, 1, 1, 1, 1],
        "block_num": [1, 1, 1, 1, 2],
        "par_num": [1, 1, 1, 1, 1],
        "line_num": [1, 1, 2, 2, 1],
        "text": ["Hello", "world", "again", "", "col2"],
        "conf": [90, 80, 70, -1, 60],
        "left": [0, 50, 0, 0, 300],
        "top": [0, 2, 30, 30, 0],
        "width": [40, 40, 50, 50, 30],
        "height": [20, 20, 20, 20, 20],
    }
    lines = engines.tesseract_lines(data)
    assert [ln.text for ln in lines] == ["Hello world", "again", "col2"]
    assert lines[0].confidence == pytest.approx(0.85) and lines[0].box == (0, 0, 90, 22)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")
def test_tesseract_engine_reads_the_page_and_names_its_language_data() -> None:
    pytest.importorskip("pytesseract")
    engine = engines.get_engine("tesseract")
    assert re.match(r"^tesseract-\d+\.\d+.*/eng@[0-9a-f]{8}$", engine.engine_id)
    got = _words(ocr_text.full_text(engine.read(np.asarray(_page()))))
    assert len(got & _words(" ".join(LINES))) >= 0.8 * len(_words(" ".join(LINES)))


def test_unknown_engine_and_bad_route_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown OCR engine"):
        engines.get_engine("abbyy")
    with pytest.raises(ValueError, match="one SQL condition"):
        OcrPass({"route": "true; DROP TABLE images"})


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ocr") / "src"
    src.mkdir()
    _page().save(src / "page.png")
    Image.new("RGB", (300, 200), (250, 250, 250)).save(src / "blank.png")
    wide = Image.new("RGB", (3000, 400), "white")  # downscaled to max_side before OCR
    wide.paste(_page(LINES[:1], (1400, 200), scale=3), (1500, 100))
    wide.save(src / "wide.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


def test_pass_rows_bad_input_empty_text_and_downscale(tmp_path: Path, collection: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(collection)], run=RunConfig(workers=1))
    ws.config.passes["ocr"] = {"max_side": 1000}
    ws.scan(progress=False)
    (rep,) = ws.run(["ocr"], progress=False, all_images=True)  # no routing: every image
    assert rep.processed == 3 and rep.unit_errors == 0  # broken.png: not an image at scan
    rows = {
        Path(r["first_path"]).name: r
        for r in ws.sql(
            "SELECT i.first_path, o.* FROM ocr o JOIN images i USING (image_id)"
        ).to_pylist()
    }
    page = rows["page.png"]
    assert _words(" ".join(LINES)) <= _words(page["text"]) | {"4711"}
    assert page["n_lines"] == len(page["lines"]) >= 3 and page["ocr_scale"] == 1.0
    assert page["engine"] == "rapidocr" and page["engine_id"].startswith("rapidocr-")
    blank = rows["blank.png"]
    assert blank["error"] is None and blank["text"] == "" and blank["n_lines"] == 0
    assert blank["mean_confidence"] is None and blank["text_area_fraction"] == 0
    wide = rows["wide.png"]
    assert wide["ocr_scale"] == pytest.approx(1000 / 3000, rel=1e-3)
    assert {"invoice", "garden"} <= _words(wide["text"])
    assert all(1400 < ln["x0"] < ln["x1"] <= 3000 for ln in wide["lines"])  # original pixels
    assert page["n_word_chars"] >= 20 and blank["n_word_chars"] == 0
    with ws.catalog() as cat:
        hits = search_ocr(cat, "garden invoice", k=5).to_pylist()
    assert [Path(h["first_path"]).name for h in hits][:2] in (
        ["page.png", "wide.png"],
        ["wide.png", "page.png"],
    )
    assert hits[0]["score"] == 1.0 and "garden" in hits[0]["snippet"].lower()
    st = {p.name: p for p in ws.status().passes}["ocr"]
    assert (st.done, st.failed) == (3, 0)


def test_routing_over_the_flags_and_the_confirmed_flag(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _page().save(src / "page.png")
    Image.new("RGB", (300, 200), (250, 250, 250)).save(src / "blank.png")
    shutil.copy(skimage_data_dir() / "astronaut.png", src / "astronaut.png")
    ws = Workspace.init(tmp_path / "ws", [str(src)], run=RunConfig(workers=1))
    ws.scan(progress=False)
    ws.run(["sense", "flags"], progress=False)
    routed = {
        Path(r["first_path"]).name
        for r in ws.sql(
            "SELECT i.first_path FROM images i JOIN flags f USING (image_id) WHERE "
            + OcrParams().route
        ).to_pylist()
    }
    assert "page.png" in routed and "astronaut.png" not in routed and "blank.png" not in routed
    (rep,) = ws.run(["ocr"], progress=False)
    assert rep.wanted == len(routed)
    assert ws.sql("SELECT count(*) AS n FROM ocr").to_pylist()[0]["n"] == len(routed)
    ws.run(["flags"], progress=False)  # re-derived: OCR confirms or refutes is_text_heavy
    flags = {
        Path(r["first_path"]).name: r
        for r in ws.sql(
            "SELECT i.first_path, f.is_text_heavy, f.text_confirmed_score, f.is_text_confirmed, "
            "f.is_text_refuted FROM flags f JOIN images i USING (image_id)"
        ).to_pylist()
    }
    assert flags["page.png"]["is_text_confirmed"] and not flags["page.png"]["is_text_refuted"]
    assert flags["page.png"]["text_confirmed_score"] == 1.0
    assert flags["astronaut.png"]["text_confirmed_score"] is None  # not read: not routed
    assert not flags["astronaut.png"]["is_text_confirmed"]
    # a different route reuses the rows already read (the route is not part of the version)
    again = Workspace(ws.storage.url)
    again.config.passes["ocr"] = {"route": "(" + OcrParams().route + ") AND true"}
    (rep2,) = again.run(["ocr"], progress=False)
    assert rep2.already_done == rep.processed and rep2.processed == 0


def test_text_confirmed_flag_rule_refutes_textures() -> None:
    import pyarrow as pa

    from exokiratory.engine.flag_rules import FlagFrame
    from exokiratory.passes.ocr.flag_rules import TextConfirmParams, text_confirmed

    ids = ["page", "stripes", "photo", "chart"]
    frame = FlagFrame(
        pa.table({"image_id": ids, "image_idx": [0, 1, 2, 3]}),
        np.ones(4, bool),
        inputs={"ocr": pa.table({"image_id": ids, "n_word_chars": [400, 0, None, 35]})},
        columns={"is_text_heavy": np.array([True, True, False, False])},
    )
    out = text_confirmed(frame, TextConfirmParams())
    assert out["is_text_confirmed"].tolist() == [True, False, False, True]
    assert out["is_text_refuted"].tolist() == [False, True, False, False]
    assert np.isnan(out["text_confirmed_score"][2]) and out["text_confirmed_score"][1] == 0


def _pdf_page(dest: Path) -> tuple[Path, str] | None:
    pdfs = sorted(Path("/usr/share/doc").glob("**/*.pdf"))
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None or not pdfs:
        return None
    pdf = pdfs[0]
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "100",
            "-png",
            "-singlefile",
            "-f",
            "2",
            "-l",
            "2",
            str(pdf),
            str(dest / "pdfpage"),
        ],
        check=True,
        capture_output=True,
    )
    truth = subprocess.run(
        ["pdftotext", "-f", "2", "-l", "2", str(pdf), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dest / "pdfpage.png", truth


def test_a_rendered_documentation_page_reads_its_words(tmp_path: Path) -> None:
    found = _pdf_page(tmp_path)
    if found is None:
        pytest.skip("needs poppler-utils and a PDF under /usr/share/doc")
    png, truth = found
    with Image.open(png) as im:
        lines = engines.get_engine("rapidocr").read(np.asarray(im.convert("RGB")))
    want = re.findall(r"\w+", truth.lower())
    got = re.findall(r"\w+", ocr_text.full_text(lines).lower())
    from collections import Counter

    t, g = Counter(want), Counter(got)
    recall = sum(min(n, g[w]) for w, n in t.items()) / max(1, sum(t.values()))
    assert recall >= 0.9, recall


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        _page((f"Page {i} of the killed run", LINES[i % 3]), (520, 120)).save(src / f"p{i}.png")

    def make(name: str) -> Path:
        root = tmp_path / name
        ws = Workspace.init(root, [str(src)], run=RunConfig(batch_size=1, workers=1))
        ws.scan(progress=False)
        return root

    ref, ws = make("ref"), make("ws")
    Workspace(ref).run(["ocr"], progress=False, all_images=True)  # uninterrupted, in-process
    parts = lambda: len(list((ws / "semantics" / "ocr").rglob("*.parquet")))  # noqa: E731
    killed = _kill_at(_cli(ws, "run", "ocr", "--all"), 0.2, parts)
    mid = parts()
    _run_to_end(_cli(ws, "run", "ocr", "--all"))
    assert killed and 0 < mid < 4, mid  # killed mid-work
    got, want = Workspace(ws).table("ocr"), Workspace(ref).table("ocr")
    assert got.num_rows == want.num_rows == 4
    assert table_rows(got) == table_rows(want)
