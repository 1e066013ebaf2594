"""OCR engines behind one small interface: an RGB array in, recognised lines out.

* :class:`RapidOcrEngine` (default): rapidocr's PaddleOCR pipeline in ONNX form: the DB text
  detector, the text-direction classifier and the CRNN recogniser, the three ``.onnx`` files that
  ship inside the ``rapidocr`` wheel (``rapidocr/models/``; nothing is downloaded: the paths are
  given to rapidocr explicitly, and a wheel without them is an error). Run by onnxruntime on the
  CPU with ``threads`` intra-op threads. rapidocr's own defaults otherwise (recognition score
  cut ``text_score`` 0.5, detector box threshold 0.5, unclip ratio 1.6), so the pass reads what
  the bare engine reads. Lines come in rapidocr's order (top to bottom, then left to right).
* :class:`TesseractEngine`: the ``tesseract`` program (Debian ``tesseract-ocr`` plus one
  ``tesseract-ocr-<lang>`` package per language) through ``pytesseract``; words are grouped into
  Tesseract's own lines (block, paragraph, line: its layout analysis gives the reading order,
  columns included); a line's confidence is the mean of its words' confidences / 100.

Both give :class:`OcrLine` rows with axis-aligned boxes in the pixels of the array given.
``engine_id`` names the engine and its model versions (recorded in every row), e.g.
``rapidocr-3.10.0/PP-OCRv6_det_small+ch_ppocr_mobile_v2.0_cls_mobile+PP-OCRv6_rec_small`` or
``tesseract-5.3.0/eng@1a2b3c4d`` (the language data file's SHA-256 prefix).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exokiratory.models.cache import ModelCache

#: shipped rapidocr models, preferred first, per task (any other ``*<task>*.onnx`` is a fallback)
RAPIDOCR_MODELS: dict[str, tuple[str, ...]] = {
    "det": ("PP-OCRv6_det_small.onnx", "ch_PP-OCRv4_det_infer.onnx"),
    "cls": ("ch_ppocr_mobile_v2.0_cls_mobile.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "rec": ("PP-OCRv6_rec_small.onnx", "ch_PP-OCRv4_rec_infer.onnx"),
}

_ENGINES: ModelCache[OcrEngine] = ModelCache()


class EngineUnavailable(RuntimeError):
    """The engine (its package, program, model or language file) is not installed."""


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its text, confidence (0..1) and box ``(x0, y0, x1, y1)`` in the
    pixels of the array the engine was given."""

    text: str
    confidence: float
    box: tuple[float, float, float, float]


class OcrEngine(Protocol):
    engine: str
    engine_id: str

    def read(self, rgb: np.ndarray) -> list[OcrLine]:
        """The recognised lines of an ``(H, W, 3)`` uint8 RGB array, in reading order."""
        ...


# -- rapidocr ---------------------------------------------------------------------------------
def rapidocr_models() -> dict[str, Path]:
    """The detection, direction and recognition ONNX files inside the installed rapidocr.

    Raises:
        EngineUnavailable: rapidocr is not installed, or its wheel lacks one of the models.
    """
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable("rapidocr is not installed: pip install 'exokiratory[ocr]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    out: dict[str, Path] = {}
    for task, names in RAPIDOCR_MODELS.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        found += sorted(folder.glob(f"*{task}*.onnx")) if folder.is_dir() else []
        if not found:
            raise EngineUnavailable(
                f"the installed rapidocr has no {task} model in {folder} (this build downloads "
                "models at run time, which exokiratory does not do): pip install "
                "'exokiratory[ocr]'"
            )
        out[task] = found[0]
    return out


def rapidocr_id() -> str:
    """``rapidocr-<version>/<det>+<cls>+<rec>`` (model file stems)."""
    models = rapidocr_models()
    version = importlib.metadata.version("rapidocr")
    return f"rapidocr-{version}/" + "+".join(models[t].stem for t in ("det", "cls", "rec"))


class RapidOcrEngine:
    """rapidocr over its shipped models (see the module docstring); thread-safe per call."""

    engine = "rapidocr"

    def __init__(self, *, threads: int = 1, text_score: float = 0.5, use_cls: bool = True):
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise EngineUnavailable(f"rapidocr: {exc}: pip install 'exokiratory[ocr]'") from exc
        models = rapidocr_models()
        params: dict[str, Any] = {
            "Global.log_level": "critical",
            "Global.text_score": float(text_score),
            "Global.use_cls": bool(use_cls),
            "Det.model_path": str(models["det"]),
            "Cls.model_path": str(models["cls"]),
            "Rec.model_path": str(models["rec"]),
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        self.ocr = RapidOCR(params=params)
        self.engine_id = rapidocr_id()

    def read(self, rgb: np.ndarray) -> list[OcrLine]:
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        if min(rgb.shape[:2]) < 8:  # a sliver: nothing a detector that downsamples 32x finds
            return []
        out: Any = self.ocr(np.ascontiguousarray(rgb[:, :, ::-1]))  # rapidocr takes BGR
        boxes, txts, scores = (getattr(out, a, None) for a in ("boxes", "txts", "scores"))
        if boxes is None or txts is None or scores is None:
            return []
        lines = []
        for quad, text, score in zip(boxes, txts, scores, strict=True):
            q = np.asarray(quad, np.float64).reshape(-1, 2)
            x0, y0 = float(q[:, 0].min()), float(q[:, 1].min())
            box = (x0, y0, float(q[:, 0].max()), float(q[:, 1].max()))
            lines.append(OcrLine(str(text), float(score), box))
        return lines


# -- Tesseract --------------------------------------------------------------------------------
def tesseract_program() -> str:
    """Path of the ``tesseract`` program, or :class:`EngineUnavailable`."""
    path = shutil.which("tesseract")
    if path is None:
        raise EngineUnavailable(
            "the tesseract program is not installed (Debian/Ubuntu: apt-get install "
            "tesseract-ocr tesseract-ocr-eng)"
        )
    if importlib.util.find_spec("pytesseract") is None:
        raise EngineUnavailable("pytesseract is not installed: pip install 'exokiratory[ocr]'")
    return path


def tesseract_id(languages: str) -> str:
    """``tesseract-<version>/<lang>@<sha8>[+<lang>@<sha8>...]`` (language data digests)."""
    import pytesseract

    tesseract_program()
    version = str(pytesseract.get_tesseract_version()).split()[0]
    parts = []
    for lang in languages.split("+"):
        data = _traineddata(lang)
        digest = hashlib.sha256(data.read_bytes()).hexdigest()[:8]
        parts.append(f"{lang}@{digest}")
    return f"tesseract-{version}/" + "+".join(parts)


def _traineddata(lang: str) -> Path:
    import pytesseract

    text = pytesseract.get_languages(config="")
    if lang not in text:
        raise EngineUnavailable(
            f"tesseract has no language {lang!r} (installed: {', '.join(sorted(text))}): "
            f"apt-get install tesseract-ocr-{lang}"
        )
    for folder in _tessdata_folders():
        if (folder / f"{lang}.traineddata").is_file():
            return folder / f"{lang}.traineddata"
    raise EngineUnavailable(f"cannot find {lang}.traineddata")


def _tessdata_folders() -> list[Path]:
    import os
    import subprocess

    folders = [Path(os.environ["TESSDATA_PREFIX"])] if "TESSDATA_PREFIX" in os.environ else []
    out = subprocess.run(
        [tesseract_program(), "--list-langs"], capture_output=True, text=True, check=False
    )
    for line in (out.stdout + out.stderr).splitlines():
        if '"' in line:
            folders.append(Path(line.split('"')[1]))
    return folders


class TesseractEngine:
    """Tesseract through pytesseract (see the module docstring)."""

    engine = "tesseract"

    def __init__(self, *, languages: str = "eng", psm: int = 3, threads: int = 1):
        self.languages = languages
        self.config = f"--oem 1 --psm {int(psm)}"
        self.threads = threads
        self.engine_id = tesseract_id(languages)

    def read(self, rgb: np.ndarray) -> list[OcrLine]:
        import os

        import pytesseract
        from PIL import Image

        if min(rgb.shape[:2]) < 8:
            return []
        os.environ["OMP_THREAD_LIMIT"] = str(self.threads)  # read by the tesseract process
        data = pytesseract.image_to_data(
            Image.fromarray(rgb),
            lang=self.languages,
            config=self.config,
            output_type=pytesseract.Output.DICT,
        )
        return tesseract_lines(data)


def tesseract_lines(data: dict[str, list[Any]]) -> list[OcrLine]:
    """Tesseract's words (``image_to_data`` as a dict) grouped into its lines, in its order."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, word in enumerate(data["text"]):
        if int(data["level"][i]) != 5 or not str(word).strip():
            continue
        key = (int(data["page_num"][i]), int(data["block_num"][i]), int(data["par_num"][i]))
        groups.setdefault((*key, int(data["line_num"][i])), []).append(i)
    lines = []
    for idx in groups.values():
        x0 = min(float(data["left"][i]) for i in idx)
        y0 = min(float(data["top"][i]) for i in idx)
        x1 = max(float(data["left"][i]) + float(data["width"][i]) for i in idx)
        y1 = max(float(data["top"][i]) + float(data["height"][i]) for i in idx)
        confs = [max(0.0, float(data["conf"][i])) / 100.0 for i in idx]
        text = " ".join(str(data["text"][i]).strip() for i in idx)
        lines.append(OcrLine(text, float(np.mean(confs)), (x0, y0, x1, y1)))
    return lines


# -- one engine per process -------------------------------------------------------------------
def get_engine(
    engine: str,
    *,
    threads: int = 1,
    text_score: float = 0.5,
    use_cls: bool = True,
    languages: str = "eng",
    psm: int = 3,
) -> OcrEngine:
    """The process-wide engine for these settings (loaded once per process).

    Raises:
        EngineUnavailable: the engine is not installed here.
        ValueError: an unknown engine name.
    """
    if engine == "rapidocr":
        key: tuple[Any, ...] = (engine, threads, text_score, use_cls)
        return _ENGINES.get_or_load(
            key, lambda: RapidOcrEngine(threads=threads, text_score=text_score, use_cls=use_cls)
        )
    if engine == "tesseract":
        key = (engine, languages, psm, threads)
        return _ENGINES.get_or_load(
            key, lambda: TesseractEngine(languages=languages, psm=psm, threads=threads)
        )
    raise ValueError(f"unknown OCR engine {engine!r}; expected rapidocr or tesseract")


def clear_cache() -> None:
    """Forget every loaded engine."""
    _ENGINES.clear()
