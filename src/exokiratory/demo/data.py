"""A small, realistic, deterministic sample collection for demos, docs and tests.

:func:`build_demo_collection` writes about 75 files (well under 15 MB, a few seconds) into a
folder and returns one :class:`DemoItem` per file saying what the file is and what a scan of the
folder should make of it:

* ``photos/``: real photographs shipped inside the scikit-image and scikit-learn wheels, re-encoded
  as JPEG / PNG / WEBP / TIFF / BMP, plus an EXIF-rotated JPEG (orientation 6), a CMYK JPEG and a
  16-bit grey PNG; some live in the nested unicode folder ``photos/été 2024/``.
* ``scans/``: document pages rendered with Pillow (heading, paragraphs of pseudo-text, paper tint,
  slight rotation, sensor noise, JPEG compression) and scikit-image's ``page.png`` / ``text.png``.
* ``graphics/``: flat-colour shapes, bar charts, logos (RGBA, palette + transparency, grey +
  alpha), gradients, UI screenshots, an animated GIF, a 1x1 image and a 2000x20 banner.
* ``dupes/``: byte-identical copies (``exact_duplicate``) and resized / recompressed / cropped /
  brightness-shifted copies (``near_duplicate``), each naming its original in ``duplicate_of``.
* ``broken/``: files with an image extension whose bytes are not a (whole) image; a scanner must
  register them as ``unreadable``.
* ``notes.txt``: a text file with a non-image extension; a scanner must ignore it (no record).

The same ``seed`` (and the same Pillow / numpy / scikit-image versions) gives byte-identical
files: every encoder option is set explicitly and no timestamps are written. The photographs need
the optional ``demo`` extra (``pip install 'exokiratory[demo]'``).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

__all__ = ["DEMO_EXTRA_HINT", "DemoItem", "DemoKind", "ExpectedStatus", "build_demo_collection"]

DemoKind = Literal[
    "photo", "scan", "graphic", "exact_duplicate", "near_duplicate", "broken", "other"
]
ExpectedStatus = Literal["ok", "unreadable"]

#: What to run when the sample photographs are missing.
DEMO_EXTRA_HINT = "pip install 'exokiratory[demo]'"

#: Name of the nested folder whose name is not ASCII.
UNICODE_FOLDER = "photos/été 2024"

_FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
}

#: Explicit encoder options per format, so output bytes depend only on pixels and library versions.
_ENCODER_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 90, "optimize": True, "progressive": False, "subsampling": "4:2:0"},
    "PNG": {"compress_level": 6, "optimize": False},
    "WEBP": {"quality": 80, "method": 4, "lossless": False, "exact": False},
    "TIFF": {"compression": "tiff_lzw"},
    "BMP": {},
    "GIF": {"optimize": False},
}

#: Syllables of the pseudo-text on rendered pages.
_SYLLABLES: tuple[str, ...] = tuple(
    "ka lo mi ra te su no vi da pe lu ri sa mo ne ta ki ro ve na li po de ru me "  # noqa: SIM905
    "tor lin vas ker mon dal fis gran pol ven tur bel cor dis men tra".split()
)

_PAPER_RGB = (244, 239, 226)
_INK_RGB = (38, 36, 40)


@dataclass(frozen=True)
class DemoItem:
    """One file of the demo collection and what a scanner should make of it.

    Attributes:
        relpath: Path relative to the collection root, with ``/`` separators.
        kind: ``photo``, ``scan``, ``graphic``, ``exact_duplicate``, ``near_duplicate``,
            ``broken`` or ``other`` (a non-image file with a non-image extension).
        expected_status: ``'ok'`` for a decodable image, ``'unreadable'`` for a file with an
            image extension whose bytes are not a whole image, ``None`` for a file a scanner must
            ignore altogether (kind ``other``: it gets no manifest record).
        duplicate_of: For duplicates, the relpath of the original; otherwise ``None``.
        note: A human-readable description (provenance, transformation or defect).
    """

    relpath: str
    kind: DemoKind
    expected_status: ExpectedStatus | None
    duplicate_of: str | None = None
    note: str = ""


def build_demo_collection(dest: str | Path, seed: int = 0) -> list[DemoItem]:
    """Write the demo collection into ``dest`` (created if needed) and describe every file.

    Args:
        dest: Target folder. Existing files with the same names are overwritten; other files are
            left alone (and are then not described by the result).
        seed: Non-negative; varies the generated content (text, noise, shapes, colours). The
            same seed gives byte-identical files.

    Returns:
        One :class:`DemoItem` per file written, in writing order.

    Raises:
        RuntimeError: When scikit-image or scikit-learn (the ``demo`` extra) is not installed.
        ValueError: When ``seed`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    sources = _SampleSources.locate()
    writer = _Writer(Path(dest), seed)
    _add_photos(writer, sources)
    _add_special_photos(writer, sources)
    _add_scans(writer, sources)
    _add_graphics(writer, sources)
    _add_exact_duplicates(writer)
    _add_near_duplicates(writer)
    _add_broken(writer)
    _add_other(writer)
    return list(writer.items)


# --------------------------------------------------------------------------- sources and writing


@dataclass(frozen=True)
class _SampleSources:
    """Folders holding the sample images shipped in the scikit-image and scikit-learn wheels."""

    skimage_data: Path
    sklearn_images: Path

    @classmethod
    def locate(cls) -> _SampleSources:
        """Find the folders without importing the (slow to import) packages."""
        return cls(
            skimage_data=_package_dir("skimage") / "data",
            sklearn_images=_package_dir("sklearn") / "datasets" / "images",
        )

    def path(self, name: str) -> Path:
        """Path of a shipped sample file (``china.jpg``/``flower.jpg`` come from scikit-learn)."""
        folder = self.sklearn_images if name in ("china.jpg", "flower.jpg") else self.skimage_data
        path = folder / name
        if not path.is_file():
            raise RuntimeError(
                f"sample image {name!r} not found at {path}; reinstall the demo extra: "
                f"{DEMO_EXTRA_HINT}"
            )
        return path

    def open(self, name: str) -> Image.Image:
        """Open and fully load a shipped sample image."""
        with Image.open(self.path(name)) as img:
            img.load()
            return img.copy()


def _package_dir(name: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the demo collection needs {name!r} (scikit-image and scikit-learn ship the sample "
            f"photos); install them with: {DEMO_EXTRA_HINT}"
        )
    return Path(spec.origin).parent


class _Writer:
    """Writes files under a root folder and records a :class:`DemoItem` for each."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.items: list[DemoItem] = []
        self._used: set[str] = set()

    def rng(self, section: int) -> np.random.Generator:
        """An independent random stream per section, so sections do not shift each other."""
        return np.random.default_rng([self.seed, section])

    def target(self, relpath: str) -> Path:
        """Absolute path for ``relpath``, creating its parent folders."""
        if relpath in self._used:
            raise ValueError(f"demo relpath written twice: {relpath}")
        self._used.add(relpath)
        path = self.root.joinpath(*PurePosixPath(relpath).parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, relpath: str) -> bytes:
        """Bytes of a file written earlier."""
        return self.root.joinpath(*PurePosixPath(relpath).parts).read_bytes()

    def save_image(
        self,
        img: Image.Image,
        relpath: str,
        kind: DemoKind,
        note: str,
        duplicate_of: str | None = None,
        **options: Any,
    ) -> None:
        """Encode ``img`` in the format its suffix names, with explicit encoder options."""
        fmt = _FORMAT_BY_SUFFIX[PurePosixPath(relpath).suffix.lower()]
        img.save(self.target(relpath), format=fmt, **{**_ENCODER_OPTIONS[fmt], **options})
        self.items.append(DemoItem(relpath, kind, "ok", duplicate_of, note))

    def write_bytes(
        self,
        relpath: str,
        data: bytes,
        kind: DemoKind,
        expected_status: ExpectedStatus | None,
        note: str,
        duplicate_of: str | None = None,
    ) -> None:
        """Write raw bytes (copies, broken files, non-images)."""
        self.target(relpath).write_bytes(data)
        self.items.append(DemoItem(relpath, kind, expected_status, duplicate_of, note))

    def copy_file(self, source: Path, relpath: str, kind: DemoKind, note: str) -> None:
        """Copy a shipped file byte for byte."""
        shutil.copyfile(source, self.target(relpath))
        self.items.append(DemoItem(relpath, kind, "ok", None, note))


# --------------------------------------------------------------------------- photos

#: Natural photos shipped inside the scikit-image wheel, in a fixed order: the one list that
#: tests, benchmarks and labelled sets take (prefixes of) when they need real photographs.
SAMPLE_PHOTOS: tuple[str, ...] = (
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
    "cell.png",
)

#: (shipped file, relpath in the collection, note). Suffixes decide the re-encoding; a ``.jpg``
#: from a ``.jpg`` is a byte copy.
_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut.png", "photos/astronaut.jpg", "astronaut Eileen Collins (NASA), PNG -> JPEG q90"),
    ("rocket.jpg", "photos/rocket.jpg", "SpaceX rocket launch, original JPEG bytes"),
    ("hubble_deep_field.jpg", "photos/hubble_deep_field.jpg", "Hubble deep field, original"),
    ("motorcycle_left.png", "photos/motorcycle_left.webp", "stereo pair left view, lossy WEBP"),
    ("motorcycle_right.png", "photos/motorcycle_right.jpg", "stereo pair right view, JPEG q90"),
    ("moon.png", "photos/moon.jpg", "grey photo of the moon surface, JPEG q90"),
    ("clock_motion.png", "photos/clock_motion.jpg", "grey photo with motion blur, JPEG q90"),
    ("camera.png", "photos/cameraman.tiff", "classic grey 'cameraman' photo, LZW TIFF"),
    ("coins.png", "photos/coins.bmp", "grey photo of coins, uncompressed BMP"),
    ("brick.png", "photos/textures/brick.jpg", "grey brick wall texture, JPEG q90"),
    ("grass.png", "photos/textures/grass.jpg", "grey grass texture, JPEG q90"),
    ("gravel.png", "photos/textures/gravel.jpg", "grey gravel texture, JPEG q90"),
    ("retina.jpg", "photos/medical/retina.jpg", "fundus photo of a retina, original"),
    ("ihc.png", "photos/medical/ihc.jpg", "immunohistochemistry microscopy, JPEG q90"),
    ("cell.png", "photos/medical/cell.png", "grey microscopy of a cell, PNG"),
    ("microaneurysms.png", "photos/medical/microaneurysms.png", "102x102 grey retina crop"),
    ("coffee.png", f"{UNICODE_FOLDER}/coffee.jpg", "cup of coffee, PNG -> JPEG q90"),
    ("chelsea.png", f"{UNICODE_FOLDER}/chelsea.png", "Chelsea the cat, PNG"),
    ("china.jpg", f"{UNICODE_FOLDER}/china.jpg", "Chinese temple (scikit-learn), original"),
    ("flower.jpg", f"{UNICODE_FOLDER}/flower.jpg", "flower (scikit-learn), original"),
)


def _add_photos(writer: _Writer, sources: _SampleSources) -> None:
    """Real photographs, byte-copied when the format is unchanged, re-encoded otherwise."""
    for name, relpath, note in _PHOTOS:
        if Path(name).suffix == PurePosixPath(relpath).suffix:
            writer.copy_file(sources.path(name), relpath, "photo", note)
        else:
            writer.save_image(sources.open(name), relpath, "photo", note)


def _add_special_photos(writer: _Writer, sources: _SampleSources) -> None:
    """Photos exercising EXIF orientation, CMYK and 16-bit decoding paths."""
    cat = sources.open("chelsea.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    writer.save_image(
        cat.transpose(Image.Transpose.ROTATE_90),
        "photos/IMG_20240712_rotated.jpg",
        "photo",
        "stored sideways with EXIF Orientation=6; upright after exif_transpose",
        exif=exif.tobytes(),
    )
    coffee = sources.open("coffee.png").convert("CMYK")
    writer.save_image(coffee, "photos/print/coffee_cmyk.jpg", "photo", "CMYK JPEG (Adobe)")
    moon = np.asarray(sources.open("moon.png").convert("L"), dtype=np.uint16) * 257
    writer.save_image(
        Image.fromarray(moon.astype(np.uint16)),
        "photos/moon_16bit.png",
        "photo",
        "16-bit grey PNG (mode I;16)",
    )


# --------------------------------------------------------------------------- scans


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (Pillow < 10.1 ignores the size)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument.
        return ImageFont.load_default()


def _pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` pronounceable nonsense words."""
    lengths = rng.integers(1, 4, size=count)
    picks = rng.integers(0, len(_SYLLABLES), size=int(lengths.sum()))
    words, start = [], 0
    for length in lengths:
        words.append("".join(_SYLLABLES[i] for i in picks[start : start + length]))
        start += int(length)
    return words


def _pseudo_sentences(rng: np.random.Generator, count: int) -> str:
    """``count`` capitalised sentences of nonsense words."""
    sentences = []
    for _ in range(count):
        words = _pseudo_words(rng, int(rng.integers(5, 15)))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def _render_page(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A tinted page with a heading and paragraphs of pseudo-text, rotated and noisy."""
    width, height = size
    tint = tuple(int(c + rng.integers(-6, 7)) for c in _PAPER_RGB)
    page = Image.new("RGB", size, tint)
    draw = ImageDraw.Draw(page)
    margin, body_size = width // 10, max(12, width // 45)
    heading = " ".join(_pseudo_words(rng, 3)).title()
    draw.text((margin, margin), heading, fill=_INK_RGB, font=_font(body_size * 2))
    _draw_paragraphs(draw, rng, (margin, margin + body_size * 4), width - 2 * margin, height)
    angle = float(rng.uniform(-1.5, 1.5))
    page = page.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(250, 250, 250))
    return _add_noise(page, rng, sigma=3.0)


def _draw_paragraphs(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    origin: tuple[int, int],
    text_width: int,
    page_height: int,
) -> None:
    """Fill the page below ``origin`` with wrapped paragraphs."""
    x, y = origin
    body_size = max(12, text_width // 36)
    font, line_height = _font(body_size), int(body_size * 1.45)
    while y < page_height - origin[0] - line_height:
        for line in _wrap(draw, _pseudo_sentences(rng, int(rng.integers(2, 6))), font, text_width):
            if y >= page_height - origin[0] - line_height:
                return
            draw.text((x, y), line, fill=_INK_RGB, font=font)
            y += line_height
        y += line_height


def _add_noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Add Gaussian sensor noise."""
    arr = np.asarray(img, dtype=np.float32)
    noisy = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _render_receipt(rng: np.random.Generator) -> Image.Image:
    """A narrow till receipt: items, prices and a total, in grey."""
    page = Image.new("L", (360, 900), 236)
    draw = ImageDraw.Draw(page)
    font = _font(18)
    draw.text((90, 30), " ".join(_pseudo_words(rng, 2)).upper(), fill=30, font=_font(26))
    total, y = 0.0, 100
    for word in _pseudo_words(rng, 22):
        price = float(rng.integers(50, 2500)) / 100
        total += price
        draw.text((24, y), word[:18], fill=40, font=font)
        draw.text((260, y), f"{price:7.2f}", fill=40, font=font)
        y += 30
    draw.line((24, y + 4, 336, y + 4), fill=60, width=2)
    draw.text((24, y + 16), "TOTAL", fill=20, font=font)
    draw.text((260, y + 16), f"{total:7.2f}", fill=20, font=font)
    page = page.rotate(float(rng.uniform(-2, 2)), resample=Image.Resampling.BICUBIC, fillcolor=250)
    return _add_noise(page, rng, sigma=4.0)


#: (relpath, page size) of the rendered document pages.
_PAGES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("scans/letters/letter_01.jpg", (1200, 1600)),
    ("scans/letters/letter_02.jpg", (1200, 1600)),
    ("scans/letters/letter_03.jpg", (1200, 1600)),
    ("scans/reports/report_p1.jpg", (850, 1100)),
    ("scans/reports/report_p2.jpg", (850, 1100)),
    ("scans/reports/report_p3.jpg", (850, 1100)),
    ("scans/reports/report_p4.jpg", (850, 1100)),
    ("scans/forms/form_a.jpg", (620, 877)),
    ("scans/forms/form_b.jpg", (620, 877)),
    ("scans/forms/form_c.png", (620, 877)),
)


def _add_scans(writer: _Writer, sources: _SampleSources) -> None:
    """Rendered document pages and receipts, plus scikit-image's scanned text samples."""
    rng = writer.rng(1)
    for relpath, size in _PAGES:
        note = f"rendered {size[0]}x{size[1]} document page: tint, rotation, noise"
        writer.save_image(_render_page(rng, size), relpath, "scan", note, quality=85)
    for index in (1, 2):
        relpath = f"scans/receipts/receipt_{index:02d}.jpg"
        writer.save_image(_render_receipt(rng), relpath, "scan", "rendered grey till receipt")
    writer.save_image(
        sources.open("page.png"), "scans/page.png", "scan", "scanned book page (scikit-image)"
    )
    writer.save_image(
        sources.open("text.png"), "scans/text.png", "scan", "photographed text (scikit-image)"
    )


# --------------------------------------------------------------------------- graphics


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated-ish random RGB colour."""
    r, g, b = (int(v) for v in rng.integers(20, 236, size=3))
    return r, g, b


def _render_shapes(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Flat-colour rectangles, ellipses and triangles on a plain background."""
    img = Image.new("RGB", size, _random_colour(rng))
    draw = ImageDraw.Draw(img)
    width, height = size
    for _ in range(int(rng.integers(5, 12))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=_random_colour(rng))
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=_random_colour(rng))
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=_random_colour(rng))
    return img


def _render_bar_chart(rng: np.random.Generator) -> Image.Image:
    """A labelled bar chart with axes and a title."""
    img = Image.new("RGB", (640, 420), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(14)
    draw.text((60, 14), " ".join(_pseudo_words(rng, 3)).title(), fill=(20, 20, 20), font=_font(20))
    draw.line((60, 360, 610, 360), fill=(0, 0, 0), width=2)
    draw.line((60, 60, 60, 360), fill=(0, 0, 0), width=2)
    for tick in range(0, 101, 25):
        y = 360 - tick * 3
        draw.line((55, y, 610, y), fill=(225, 225, 225))
        draw.text((20, y - 8), str(tick), fill=(60, 60, 60), font=font)
    values = rng.integers(10, 100, size=int(rng.integers(4, 9)))
    step = 540 // len(values)
    colour = _random_colour(rng)
    for i, (value, label) in enumerate(zip(values, _pseudo_words(rng, len(values)), strict=True)):
        x0 = 70 + i * step
        draw.rectangle((x0, 360 - int(value) * 3, x0 + step - 14, 359), fill=colour)
        draw.text((x0, 368), label[:8], fill=(40, 40, 40), font=font)
    return img


def _render_logo(rng: np.random.Generator) -> Image.Image:
    """An RGBA logo: a coloured disc with initials on a transparent background."""
    img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((16, 16, 240, 240), fill=(*_random_colour(rng), 255))
    draw.ellipse((40, 40, 216, 216), outline=(255, 255, 255, 255), width=8)
    initials = "".join(word[0] for word in _pseudo_words(rng, 2)).upper()
    draw.text((128, 128), initials, fill=(255, 255, 255, 255), font=_font(96), anchor="mm")
    return img


def _render_palette_logo(rng: np.random.Generator) -> Image.Image:
    """A palette image whose index 0 is transparent (saved with a ``tRNS`` chunk)."""
    img = Image.new("P", (200, 120), 0)
    palette = [255, 255, 255]
    for _ in range(3):
        palette.extend(_random_colour(rng))
    img.putpalette(palette + [0] * (768 - len(palette)))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((10, 20, 190, 100), radius=24, fill=1)
    draw.polygon([(30, 90), (70, 30), (110, 90)], fill=2)
    draw.ellipse((120, 40, 170, 90), fill=3)
    return img


def _render_gradient(rng: np.random.Generator, size: tuple[int, int], radial: bool) -> Image.Image:
    """A smooth two-colour gradient, linear (left to right) or radial (from the centre)."""
    width, height = size
    start = np.array(_random_colour(rng), dtype=np.float32)
    end = np.array(_random_colour(rng), dtype=np.float32)
    if radial:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        dist = np.hypot(xx - width / 2, yy - height / 2)
        t = dist / float(dist.max())
    else:
        t = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    rgb = start + (end - start) * t[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _render_screenshot(rng: np.random.Generator) -> Image.Image:
    """A UI mock: title bar, sidebar menu, toolbar buttons and content cards."""
    img = Image.new("RGB", (1024, 640), (246, 247, 249))
    draw = ImageDraw.Draw(img)
    accent = _random_colour(rng)
    font, small = _font(16), _font(13)
    draw.rectangle((0, 0, 1023, 36), fill=(52, 56, 64))
    for i, colour in enumerate(((237, 95, 87), (245, 190, 79), (98, 197, 84))):
        draw.ellipse((12 + i * 22, 11, 26 + i * 22, 25), fill=colour)
    draw.text((420, 9), " ".join(_pseudo_words(rng, 2)).title(), fill=(230, 230, 230), font=font)
    draw.rectangle((0, 37, 200, 639), fill=(232, 234, 238))
    for i, word in enumerate(_pseudo_words(rng, 9)):
        if i == 2:
            draw.rectangle((0, 60 + i * 34, 200, 88 + i * 34), fill=accent)
        draw.text((24, 66 + i * 34), word.title(), fill=(40, 40, 40), font=font)
    for i, word in enumerate(_pseudo_words(rng, 4)):
        draw.rounded_rectangle((224 + i * 120, 52, 332 + i * 120, 84), radius=6, fill=accent)
        draw.text((236 + i * 120, 60), word[:10], fill=(255, 255, 255), font=small)
    for card in range(6):
        x0, y0 = 224 + (card % 3) * 264, 110 + (card // 3) * 260
        draw.rounded_rectangle((x0, y0, x0 + 244, y0 + 236), radius=10, fill=(255, 255, 255))
        draw.rectangle((x0 + 12, y0 + 12, x0 + 232, y0 + 120), fill=_random_colour(rng))
        for line in range(4):
            y = y0 + 134 + line * 22
            draw.text((x0 + 12, y), " ".join(_pseudo_words(rng, 3)), fill=(90, 90, 90), font=small)
    return img


def _spinner_frames(rng: np.random.Generator) -> list[Image.Image]:
    """Three palette frames of a dot moving around a ring."""
    colour = _random_colour(rng)
    frames = []
    for step in range(3):
        frame = Image.new("RGB", (96, 96), (255, 255, 255))
        draw = ImageDraw.Draw(frame)
        draw.ellipse((12, 12, 84, 84), outline=(200, 200, 200), width=6)
        angle = step * 2 * np.pi / 3
        cx, cy = 48 + 36 * np.cos(angle), 48 + 36 * np.sin(angle)
        draw.ellipse((cx - 10, cy - 10, cx + 10, cy + 10), fill=colour)
        frames.append(frame.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    return frames


def _add_graphics(writer: _Writer, sources: _SampleSources) -> None:
    """Synthetic graphics plus a few flat-ish scikit-image samples and the odd-mode specimens."""
    rng = writer.rng(2)
    for index, size in enumerate(((640, 480), (800, 600), (512, 512), (1024, 400)), start=1):
        writer.save_image(
            _render_shapes(rng, size), f"graphics/shapes_{index:02d}.png", "graphic", "shapes"
        )
    for index in (1, 2):
        relpath = f"graphics/charts/bar_chart_{index:02d}.png"
        writer.save_image(_render_bar_chart(rng), relpath, "graphic", "bar chart")
    writer.save_image(_render_logo(rng), "graphics/logos/logo.png", "graphic", "RGBA logo")
    writer.save_image(
        _render_palette_logo(rng),
        "graphics/logos/logo_palette_transparent.png",
        "graphic",
        "palette (P) PNG with a transparent index (tRNS)",
        transparency=0,
    )
    writer.save_image(
        sources.open("logo.png").convert("LA"),
        "graphics/logos/skimage_logo_grey_alpha.png",
        "graphic",
        "grey + alpha (LA) PNG of the scikit-image logo",
    )
    _add_plain_graphics(writer, rng, sources)


def _add_plain_graphics(writer: _Writer, rng: np.random.Generator, sources: _SampleSources) -> None:
    """Gradients, screenshots, the animated GIF and the extreme-size images."""
    linear = _render_gradient(rng, (800, 200), radial=False)
    writer.save_image(linear, "graphics/gradient_linear.png", "graphic", "linear gradient")
    radial = _render_gradient(rng, (600, 600), radial=True)
    writer.save_image(radial, "graphics/gradient_radial.jpg", "graphic", "radial gradient, JPEG")
    for index in (1, 2):
        relpath = f"graphics/ui/screenshot_{index:02d}.png"
        writer.save_image(_render_screenshot(rng), relpath, "graphic", "UI screenshot mock-up")
    first, *rest = _spinner_frames(rng)
    writer.save_image(
        first,
        "graphics/spinner_animated.gif",
        "graphic",
        "animated GIF, 3 frames",
        save_all=True,
        append_images=rest,
        duration=200,
        loop=0,
        disposal=2,
    )
    pixel = Image.new("RGB", (1, 1), _random_colour(rng))
    writer.save_image(pixel, "graphics/pixel_1x1.png", "graphic", "1x1 image")
    banner = _render_gradient(rng, (2000, 20), radial=False)
    writer.save_image(banner, "graphics/banner_2000x20.png", "graphic", "extreme aspect 100:1")
    writer.save_image(
        sources.open("horse.png"), "graphics/horse_silhouette.png", "graphic", "RGBA silhouette"
    )
    writer.save_image(
        sources.open("chessboard_RGB.png"), "graphics/chessboard.png", "graphic", "chessboard"
    )


# --------------------------------------------------------------------------- duplicates

#: (original, copy) pairs of byte-identical files.
_EXACT_DUPLICATES: tuple[tuple[str, str], ...] = (
    (f"{UNICODE_FOLDER}/coffee.jpg", "dupes/coffee (1).jpg"),
    ("photos/astronaut.jpg", "dupes/backup/astronaut.jpg"),
    ("scans/letters/letter_02.jpg", "dupes/backup/scans/letter_02.jpg"),
)


def _add_exact_duplicates(writer: _Writer) -> None:
    """Byte-identical copies of earlier files under other names and folders."""
    for original, copy in _EXACT_DUPLICATES:
        writer.write_bytes(
            copy,
            writer.read(original),
            "exact_duplicate",
            "ok",
            f"byte-identical copy of {original}",
            duplicate_of=original,
        )


def _open_written(writer: _Writer, relpath: str) -> Image.Image:
    """Decode a file written earlier in this build."""
    with Image.open(io.BytesIO(writer.read(relpath))) as img:
        img.load()
        return img.convert("RGB")


def _scaled(img: Image.Image, factor: float) -> Image.Image:
    """``img`` resized by ``factor`` with a Lanczos filter."""
    size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _cropped(img: Image.Image, fraction: float) -> Image.Image:
    """``img`` with ``fraction`` of its width and height trimmed, evenly on each side."""
    dx, dy = round(img.width * fraction / 2), round(img.height * fraction / 2)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _add_near_duplicates(writer: _Writer) -> None:
    """Visually similar copies of a few photos: resized, recompressed, cropped, re-exposed."""
    astronaut = _open_written(writer, "photos/astronaut.jpg")
    china = f"{UNICODE_FOLDER}/china.jpg"
    coffee = f"{UNICODE_FOLDER}/coffee.jpg"
    cat = f"{UNICODE_FOLDER}/chelsea.png"
    flower = f"{UNICODE_FOLDER}/flower.jpg"
    variants: list[tuple[str, str, Image.Image, str, dict[str, Any]]] = [
        ("photos/astronaut.jpg", "astronaut_half.jpg", _scaled(astronaut, 0.5), "resized 50%", {}),
        (
            "photos/astronaut.jpg",
            "astronaut_q35.jpg",
            astronaut,
            "recompressed q35",
            {"quality": 35},
        ),
        (china, "china_crop.jpg", _cropped(_open_written(writer, china), 0.2), "cropped 20%", {}),
        (coffee, "coffee_bright.jpg", _brightness(writer, coffee, 1.25), "brightness +25%", {}),
        (
            "photos/rocket.jpg",
            "rocket_dark.jpg",
            _brightness(writer, "photos/rocket.jpg", 0.8),
            "brightness -20%",
            {},
        ),
        (cat, "chelsea_thumb.jpg", _scaled(_open_written(writer, cat), 0.4), "thumbnail 40%", {}),
        (flower, "flower.png", _open_written(writer, flower), "same pixels, PNG container", {}),
        (
            "photos/hubble_deep_field.jpg",
            "hubble_small.jpg",
            _scaled(_open_written(writer, "photos/hubble_deep_field.jpg"), 0.6),
            "resized 60%, q75",
            {"quality": 75},
        ),
    ]
    for original, name, img, how, options in variants:
        writer.save_image(
            img, f"dupes/near/{name}", "near_duplicate", f"{how} of {original}", original, **options
        )


def _brightness(writer: _Writer, relpath: str, factor: float) -> Image.Image:
    """A file written earlier with its brightness scaled by ``factor``."""
    return ImageEnhance.Brightness(_open_written(writer, relpath)).enhance(factor)


# --------------------------------------------------------------------------- broken and other


def _add_broken(writer: _Writer) -> None:
    """Files with image extensions that a scanner must register as ``unreadable``."""
    jpeg = writer.read("photos/astronaut.jpg")
    png = writer.read(f"{UNICODE_FOLDER}/chelsea.png")
    random_tail = writer.rng(3).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    broken: tuple[tuple[str, bytes, str], ...] = (
        ("broken/empty.jpg", b"", "zero bytes"),
        ("broken/truncated.jpg", jpeg[: len(jpeg) * 6 // 10], "first 60% of a JPEG: no EOI"),
        ("broken/truncated.png", png[: len(png) * 6 // 10], "first 60% of a PNG: no IEND"),
        (
            "broken/not_really_an_image.jpg",
            b"This is a plain text file that someone renamed to .jpg.\n" * 4,
            "plain text with a .jpg extension",
        ),
        (
            "broken/random_bytes.png",
            b"\x00garbage\x00" + random_tail,
            "random bytes with a .png extension (no known magic)",
        ),
    )
    for relpath, data, note in broken:
        writer.write_bytes(relpath, data, "broken", "unreadable", note)


def _add_other(writer: _Writer) -> None:
    """A non-image file with a non-image extension: a scanner must skip it entirely."""
    text = (
        "Demo collection written by exokiratory.demo.data.build_demo_collection.\n"
        "This file is not an image and has no image extension: scanners ignore it.\n"
    )
    writer.write_bytes(
        "notes.txt",
        text.encode("utf-8"),
        "other",
        None,
        "not an image, non-image extension: must be ignored by a scanner (no record at all)",
    )
