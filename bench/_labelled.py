"""A labelled collection of real images for the semantic-flag benches.

* photo: the natural photos shipped in the scikit-image and scikit-learn wheels (and the demo
  collection's re-encoded copies of them);
* scan: pages of the PDF manuals Debian installs under /usr/share/doc rendered with
  ``pdftoppm`` (poppler-utils) at 100 dpi, plus the demo collection's rendered pages, receipts
  and scikit-image's ``page.png`` / ``text.png``;
* graphic: the demo collection's generated graphics (shapes, charts, logos, gradients, UI
  mock-ups, silhouette, chessboard);
* faces: scikit-image's ``lfw_subset`` (100 face crops and 100 non-face crops, 25x25 grey,
  upscaled to 150x150 here), for the face detector only.

Human-present labels are by hand: among the photos only ``astronaut`` (a face) and ``camera``
(the cameraman, face in three-quarter view) show a person.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from exokiratory.demo.data import SAMPLE_PHOTOS

PDF_GLOBS = ("/usr/share/doc/**/*.pdf", "/usr/share/doc/**/*.pdf.gz")
PAGES_PER_PDF = 6
HUMAN_PHOTOS = {"astronaut", "camera"}


@dataclass(frozen=True)
class Labelled:
    path: Path
    kind: str  # photo | scan | graphic | face | nonface
    human: bool
    text_heavy: bool


def _pdfs() -> list[Path]:
    out: list[Path] = []
    for pattern in PDF_GLOBS:
        out += sorted(Path("/").glob(pattern.lstrip("/")))
    return out


def render_pdf_pages(dest: Path, pages_per_pdf: int = PAGES_PER_PDF) -> list[Path]:
    """Pages 2.. of every Debian PDF manual, as PNG at 100 dpi (empty without pdftoppm)."""
    if shutil.which("pdftoppm") is None:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, pdf in enumerate(_pdfs()):
            src = pdf
            if pdf.suffix == ".gz":
                src = Path(tmp) / pdf.stem
                src.write_bytes(gzip.decompress(pdf.read_bytes()))
            prefix = dest / f"doc{i:02d}"
            last = str(1 + pages_per_pdf)
            cmd = ["pdftoppm", "-r", "100", "-png", "-f", "2", "-l", last, str(src), str(prefix)]
            subprocess.run(cmd, check=False, capture_output=True)
            out += sorted(dest.glob(f"doc{i:02d}-*.png"))
    return out


def lfw_crops(dest: Path, side: int = 150) -> list[Labelled]:
    import skimage.data

    dest.mkdir(parents=True, exist_ok=True)
    faces = skimage.data.lfw_subset()  # 200 x 25 x 25 floats: 100 faces then 100 non-faces
    out = []
    for i, arr in enumerate(faces):
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).resize((side, side))
        kind = "face" if i < 100 else "nonface"
        path = dest / f"{kind}_{i:03d}.png"
        img.save(path)
        out.append(Labelled(path, kind, i < 100, False))
    return out


def build_labelled(root: Path, with_lfw: bool = True) -> list[Labelled]:
    """Write the collection under ``root`` and return its labels."""
    import skimage
    import sklearn

    from exokiratory.demo.data import build_demo_collection

    items: list[Labelled] = []
    demo = root / "demo"
    for it in build_demo_collection(demo):
        if it.kind not in ("photo", "scan", "graphic") or it.expected_status != "ok":
            continue
        stem = Path(it.relpath).stem
        human = it.kind == "photo" and any(stem.startswith(h) for h in HUMAN_PHOTOS)
        items.append(Labelled(demo / it.relpath, it.kind, human, it.kind == "scan"))
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    sk = Path(skimage.__file__).parent / "data"
    for name in SAMPLE_PHOTOS:
        shutil.copy(sk / name, photos / name)
        human = Path(name).stem in HUMAN_PHOTOS
        items.append(Labelled(photos / name, "photo", human, False))
    skl = Path(sklearn.__file__).parent / "datasets" / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(skl / name, photos / name)
        items.append(Labelled(photos / name, "photo", False, False))
    for page in render_pdf_pages(root / "pdf"):
        items.append(Labelled(page, "scan", False, True))
    if with_lfw:
        items += lfw_crops(root / "lfw")
    return items
