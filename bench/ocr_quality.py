"""OCR on real scans: bag-of-words recall and time of bare rapidocr, the ``ocr`` pass, Tesseract.

Pages: the PDF manuals Debian installs under /usr/share/doc, rendered at 100 dpi with
``pdftoppm`` (poppler-utils) into a temporary folder, pages 2.. of each PDF in turn until
``--pages``; the truth of a page is ``pdftotext`` of the same page. Words are NFKC-normalised,
lower-cased ``\\w+`` tokens; recall = sum over tokens of min(truth count, OCR count) / truth
tokens (a bag of words: the order does not count), reported for every token and for the words
only (tokens of two or more characters with a letter: page numbers and list numbers of tables of
contents, which rapidocr drops after dotted leaders, are most of the difference).

* bare rapidocr: ``RapidOCR`` on each PNG path, same shipped models and thread count as the
  pass; timed twice (before and after the pass, the machine is shared), the mean is the
  reference.
* the pass: a workspace over the pages, ``scan``, ``sense``, ``cues``, ``flags`` (untimed: they
  say which pages the default route takes, against ``is_text_heavy`` alone), then ``run ocr``
  with one worker, timed end to end (planning, decode, OCR, Parquet, jobs log); the engine is
  loaded before the clock starts, as for the bare engine.
* Tesseract 5 (``tesseract-ocr-eng``) through pytesseract, ``--oem 1 --psm 3``, one thread.

    python bench/ocr_quality.py --pages 30 [--threads 1] [--no-tesseract]
"""

from __future__ import annotations

import argparse
import gzip
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _labelled import _pdfs

from exokiratory import Workspace
from exokiratory.core.config import RunConfig

_WORD = re.compile(r"\w+")


def words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def recall(truth: Counter[str], got: Counter[str]) -> float:
    total = sum(truth.values())
    return sum(min(n, got[w]) for w, n in truth.items()) / total if total else 1.0


def letter_words(c: Counter[str]) -> Counter[str]:
    """Only tokens of two or more characters with a letter (no page numbers, no "i")."""
    return Counter({w: n for w, n in c.items() if len(w) >= 2 and any(ch.isalpha() for ch in w)})


def recalls_of(truth: str, got: str) -> tuple[float, float]:
    """(recall of every token, recall of the words of two or more characters with a letter)."""
    t, g = words(truth), words(got)
    return recall(t, g), recall(letter_words(t), letter_words(g))


def render_pages(dest: Path, n_pages: int, tmp: Path) -> list[tuple[Path, str]]:
    """Up to ``n_pages`` (png, truth text) pairs, pages 2.. of every PDF in turn."""
    pdfs = []
    for i, pdf in enumerate(_pdfs()):
        src = pdf
        if pdf.suffix == ".gz":
            src = tmp / f"doc{i:02d}.pdf"
            src.write_bytes(gzip.decompress(pdf.read_bytes()))
        pdfs.append(src)
    out: list[tuple[Path, str]] = []
    page = 2
    while len(out) < n_pages and page < 40:
        for i, pdf in enumerate(pdfs):
            if len(out) >= n_pages:
                break
            png = dest / f"doc{i:02d}-p{page:02d}"
            pp = ["pdftoppm", "-r", "100", "-png", "-singlefile", "-f", str(page), "-l", str(page)]
            subprocess.run([*pp, str(pdf), str(png)], capture_output=True, check=False)
            txt = subprocess.run(
                ["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if png.with_suffix(".png").is_file() and sum(words(txt).values()) >= 20:
                out.append((png.with_suffix(".png"), txt))
        page += 1
    return out


class Clock:
    """Wall time and CPU time (this process's threads; with ``children``, plus the child
    processes that finished meanwhile: tesseract)."""

    def __init__(self, children: bool = False) -> None:
        self.children = children

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = self._cpu() - self.cpu0

    def _cpu(self) -> float:
        if not self.children:
            return time.process_time()
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime


def bare_rapidocr(
    pages: list[tuple[Path, str]], threads: int
) -> tuple[Clock, list[tuple[float, float]]]:
    from rapidocr import RapidOCR

    from exokiratory.passes.ocr.engines import rapidocr_models

    m = rapidocr_models()
    engine = RapidOCR(
        params={
            "Global.log_level": "critical",
            "Det.model_path": str(m["det"]),
            "Cls.model_path": str(m["cls"]),
            "Rec.model_path": str(m["rec"]),
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    recalls: list[tuple[float, float]] = []
    with Clock() as clock:
        for png, truth in pages:
            out: Any = engine(str(png))
            recalls.append(recalls_of(truth, " ".join(out.txts or ())))
    return clock, recalls


def tesseract(pages: list[tuple[Path, str]]) -> tuple[Clock, list[tuple[float, float]]]:
    import os

    import pytesseract
    from PIL import Image

    os.environ["OMP_THREAD_LIMIT"] = "1"
    recalls: list[tuple[float, float]] = []
    with Clock(children=True) as clock:
        for png, truth in pages:
            with Image.open(png) as im:
                text = pytesseract.image_to_string(im, lang="eng", config="--oem 1 --psm 3")
            recalls.append(recalls_of(truth, text))
    return clock, recalls


def the_pass(root: Path, src: Path, pages: list[tuple[Path, str]], threads: int) -> dict:
    from exokiratory.passes.ocr.engines import get_engine

    ws = Workspace.init(root, [str(src)], run=RunConfig(workers=1))
    ws.config.passes["ocr"] = {"threads": threads} if threads != 1 else {}
    ws.scan(progress=False)
    ws.run(["sense", "cues", "flags"], progress=False, workers=2)
    flags = ws.sql(
        "SELECT count(*) FILTER (WHERE is_text_heavy) AS th, count(*) AS n FROM flags"
    ).to_pylist()[0]
    get_engine("rapidocr", threads=threads)  # loaded before the clock, as the bare engine
    with Clock() as clock:  # one worker: in this process, so its CPU time counts here
        (rep,) = ws.run(["ocr"], progress=False, workers=1)
    texts = {
        Path(r["first_path"]).name: r["text"]
        for r in ws.sql(
            "SELECT i.first_path, o.text FROM ocr o JOIN images i USING (image_id)"
        ).to_pylist()
    }
    found = [recalls_of(t, texts.get(p.name, "")) for p, t in pages]
    return {
        "clock": clock,
        "recalls": found,
        "routed": getattr(rep, "wanted", 0),
        "text_heavy": flags["th"],
        "n": flags["n"],
        "summary": rep.summary(),
    }


def mean(xs: list[tuple[float, float]], i: int) -> float:
    return sum(x[i] for x in xs) / len(xs) if xs else float("nan")


def quality(xs: list[tuple[float, float]]) -> str:
    """Mean (min) recall of every token, and of letter words."""
    return (
        f"recall {mean(xs, 0):.4f} (min {min(x[0] for x in xs):.3f}), words "
        f"{mean(xs, 1):.4f} (min {min(x[1] for x in xs):.3f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-tesseract", action="store_true")
    args = ap.parse_args()
    if shutil.which("pdftoppm") is None:
        sys.exit("needs poppler-utils (pdftoppm, pdftotext)")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "pages"
        src.mkdir()
        pages = render_pages(src, args.pages, tmp)
        n_words = sum(sum(words(t).values()) for _, t in pages)
        print(f"{len(pages)} pages, {n_words} truth words, threads={args.threads}")
        b1, r_bare = bare_rapidocr(pages, args.threads)
        res = the_pass(tmp / "ws", src, pages, args.threads)
        b2, _ = bare_rapidocr(pages, args.threads)
        wall, cpu = (b1.wall + b2.wall) / 2, (b1.cpu + b2.cpu) / 2
        n, c = len(pages), res["clock"]
        print(
            f"routed by the default route: {res['routed']}/{n} pages; "
            f"is_text_heavy alone: {res['text_heavy']}/{res['n']}"
        )
        print(
            f"bare rapidocr : {quality(r_bare)}; wall "
            f"{b1.wall:.1f} s and {b2.wall:.1f} s; CPU {b1.cpu:.1f} s and {b2.cpu:.1f} s "
            f"({cpu / n:.2f} s/page)"
        )
        print(
            f"ocr pass      : {quality(res['recalls'])}; "
            f"wall {c.wall:.1f} s = {c.wall / wall:.3f}x bare; "
            f"CPU {c.cpu:.1f} s = {c.cpu / cpu:.3f}x bare"
        )
        print("  " + res["summary"])
        if not args.no_tesseract and shutil.which("tesseract"):
            t, r_tess = tesseract(pages)
            print(
                f"tesseract     : {quality(r_tess)}; wall "
                f"{t.wall:.1f} s, CPU {t.cpu:.1f} s ({t.cpu / n:.2f} s/page)"
            )


if __name__ == "__main__":
    main()
