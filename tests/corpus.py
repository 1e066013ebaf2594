"""Test corpora written on demand: a hostile corpus of edge cases and a synthetic bulk collection.

This is a helper module imported by tests (``from corpus import ...``), not a test file.

* :func:`make_hostile_corpus` writes one file (or link) per edge case a scanner must survive and
  returns the outcome each must get.
* :func:`make_synthetic_collection` writes ``n`` small, distinct images (optionally with exact
  duplicates) spread over nested folders, fast enough for thousands of files per test.

Both are deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

#: The outcomes :func:`make_hostile_corpus` can expect for a path.
HOSTILE_OUTCOMES = frozenset({"ok", "empty", "truncated", "not_image", "bomb", "broken_symlink"})

#: Width and height claimed by the decompression bomb's IHDR chunk.
BOMB_SIDE = 100_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Name of the file whose name mixes unicode, spaces and URL / shell-special characters.
ODD_NAME = "café été #1 50% ?.png"

_JPEG_OPTIONS: dict[str, object] = {
    "quality": 90,
    "optimize": False,
    "progressive": False,
    "subsampling": "4:2:0",
}
_PNG_OPTIONS: dict[str, object] = {"compress_level": 6, "optimize": False}


# --------------------------------------------------------------------------- pixel sources


def _smooth_rgb(size: tuple[int, int], key: int) -> Image.Image:
    """A smooth, photo-like RGB image: a random low-resolution grid upscaled bilinearly."""
    rng = np.random.default_rng([1234, key])
    grid = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)


def _noisy_rgb(size: tuple[int, int], key: int) -> Image.Image:
    """A high-entropy RGB image, so encoded files are long enough to cut meaningfully."""
    rng = np.random.default_rng([4321, key])
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode ``img`` in memory with explicit, timestamp-free options."""
    defaults = {"JPEG": _JPEG_OPTIONS, "PNG": _PNG_OPTIONS}.get(fmt, {})
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **{**defaults, **options})
    return buffer.getvalue()


# --------------------------------------------------------------------------- hostile files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC-32 of type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE, rows: int = 4) -> bytes:
    """A valid-looking PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels.

    Only ``rows`` zero rows are compressed into the IDAT chunk, so the file is a few hundred
    bytes while a naive decoder would allocate ``width * height`` bytes. All CRCs are valid.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    scanlines = (b"\x00" + bytes(width)) * rows  # filter type 0 + zero pixels, per row
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(scanlines, 9))
        + png_chunk(b"IEND", b"")
    )


def png_ihdr_size(data: bytes) -> tuple[int, int]:
    """Width and height claimed by a PNG's IHDR chunk (no decoding)."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG with a leading IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _truncated_jpeg() -> bytes:
    """A JPEG cut to 60% of its length: valid SOI/header, no end-of-image marker (FFD9)."""
    data = _encode(_noisy_rgb((256, 256), 1), "JPEG")
    return data[: len(data) * 6 // 10]


def _truncated_png() -> bytes:
    """A PNG cut to 60% of its length: valid signature and IHDR, no IEND chunk."""
    data = _encode(_noisy_rgb((128, 128), 2), "PNG")
    return data[: len(data) * 6 // 10]


def _cmyk_jpeg() -> bytes:
    """A CMYK JPEG (Adobe APP14 marker, inverted channels on some decoders)."""
    return _encode(_smooth_rgb((96, 64), 3).convert("CMYK"), "JPEG")


def _grey16_png() -> bytes:
    """A 16-bit greyscale PNG (opens as mode ``I;16``) using the full 0..65535 range."""
    ramp = np.linspace(0, 65535, 64 * 48, dtype=np.float64).reshape(48, 64)
    return _encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def _palette_alpha_png() -> bytes:
    """A palette (``P``) PNG whose index 0 is transparent (``tRNS`` chunk)."""
    img = _smooth_rgb((64, 64), 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(img, "PNG", transparency=0)


def _grey_alpha_png() -> bytes:
    """A grey + alpha (``LA``) PNG with a horizontal alpha ramp."""
    grey = _smooth_rgb((64, 64), 5).convert("L")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)))
    return _encode(Image.merge("LA", (grey, alpha)), "PNG")


def _animated_gif() -> bytes:
    """A 3-frame looping GIF."""
    frames = [
        _smooth_rgb((48, 48), 10 + i).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        for i in range(3)
    ]
    return _encode(
        frames[0],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
        optimize=False,
    )


def _exif_rotated_jpeg() -> bytes:
    """A 80x40 JPEG with EXIF Orientation 6 (displays as 40x80 after exif_transpose)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_smooth_rgb((80, 40), 6), "JPEG", exif=exif.tobytes())


def _wide_png() -> bytes:
    """A 20000 x 20 PNG (aspect ratio 1000:1)."""
    return _encode(_smooth_rgb((20000, 20), 7), "PNG")


#: relpath -> (bytes factory, expected outcome), for the regular files of the hostile corpus.
_HOSTILE_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.jpg": (lambda: b"", "empty"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "truncated.png": (_truncated_png, "truncated"),
    "text_named.jpg": (lambda: b"Just some text, named like a photo.\n" * 3, "not_image"),
    "tiny_1x1.png": (lambda: _encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"), "ok"),
    "wide_20000x20.png": (_wide_png, "ok"),
    "cmyk.jpg": (_cmyk_jpeg, "ok"),
    "grey16.png": (_grey16_png, "ok"),
    "palette_alpha.png": (_palette_alpha_png, "ok"),
    "grey_alpha.png": (_grey_alpha_png, "ok"),
    "animated.gif": (_animated_gif, "ok"),
    "exif_rotated.jpg": (_exif_rotated_jpeg, "ok"),
    "bomb.png": (bomb_png, "bomb"),
    ODD_NAME: (lambda: _encode(_smooth_rgb((40, 30), 8), "PNG"), "ok"),
    "UPPER_CASE.JPEG": (lambda: _encode(_smooth_rgb((40, 30), 9), "JPEG"), "ok"),
    "no_extension": (lambda: _encode(_smooth_rgb((30, 40), 20), "PNG"), "ok"),
    "jpeg_named.png": (lambda: _encode(_smooth_rgb((50, 30), 21), "JPEG"), "ok"),
}


def _replace_symlink(target: str, link: Path, is_dir: bool = False) -> bool:
    """(Re)create ``link -> target``; ``False`` where the platform refuses symlinks."""
    if link.is_symlink():
        link.unlink()
    try:
        os.symlink(target, link, target_is_directory=is_dir)
    except (OSError, NotImplementedError):
        return False
    return True


def make_hostile_corpus(dest: Path) -> dict[str, str]:
    """Write the hostile corpus into ``dest`` and return ``relpath -> expected outcome``.

    Outcomes: ``ok`` (a valid image that must be registered with status ok), ``empty``,
    ``truncated``, ``not_image``, ``bomb``, ``broken_symlink``. Entries:

    * ``empty.jpg``: zero bytes (``empty``).
    * ``truncated.jpg``: first 60% of a JPEG; valid header, no EOI marker ``FFD9`` (``truncated``).
    * ``truncated.png``: first 60% of a PNG; valid signature and IHDR, no ``IEND`` (``truncated``).
    * ``text_named.jpg``: plain text with an image extension (``not_image``).
    * ``tiny_1x1.png``: a 1x1 RGB PNG (``ok``).
    * ``wide_20000x20.png``: 20000 x 20 px, aspect 1000:1 (``ok``).
    * ``cmyk.jpg``: a CMYK JPEG (``ok``).
    * ``grey16.png``: 16-bit grey, mode ``I;16`` (``ok``).
    * ``palette_alpha.png``: palette image with a transparent index (``ok``).
    * ``grey_alpha.png``: grey + alpha, mode ``LA`` (``ok``).
    * ``animated.gif``: 3 frames (``ok``).
    * ``exif_rotated.jpg``: 80x40 stored, EXIF Orientation 6 (``ok``).
    * ``bomb.png``: IHDR claims 100000 x 100000 px (10^10) but the file is a few hundred bytes;
      CRCs are valid (``bomb``).
    * ``dangling.jpg``: symlink to the missing ``nowhere.jpg`` (``broken_symlink``).
    * :data:`ODD_NAME`: unicode, spaces, ``#``, ``%`` and ``?`` in the name (``ok``).
    * ``UPPER_CASE.JPEG``: an upper-case extension (``ok``).
    * ``no_extension``: a PNG with no extension at all (``ok``: magic bytes decide).
    * ``jpeg_named.png``: a JPEG named ``.png`` (``ok``: magic bytes decide).
    * ``loop/self -> ..``: a symlink loop. Not in the returned mapping (it holds no files); a
      scanner must neither follow it forever nor register anything for it.

    The symlinks are left out (of the disk and the mapping) where the platform refuses them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for relpath, (factory, outcome) in _HOSTILE_FILES.items():
        (dest / relpath).write_bytes(factory())
        expected[relpath] = outcome
    if _replace_symlink("nowhere.jpg", dest / "dangling.jpg"):
        expected["dangling.jpg"] = "broken_symlink"
    (dest / "loop").mkdir(exist_ok=True)
    _replace_symlink("..", dest / "loop" / "self", is_dir=True)
    return expected


# --------------------------------------------------------------------------- synthetic bulk

#: Files per leaf folder of the synthetic collection.
FILES_PER_FOLDER = 100


def synthetic_relpath(index: int, suffix: str) -> str:
    """Where file ``index`` of a synthetic collection lives: 100 per folder, 10 per batch."""
    batch, folder = index // (FILES_PER_FOLDER * 10), (index // FILES_PER_FOLDER) % 10
    return f"batch_{batch:03d}/folder_{folder:02d}/img_{index:06d}{suffix}"


def _synthetic_image(seed: int, index: int) -> tuple[bytes, str]:
    """Encoded bytes and suffix of the distinct image for ``index`` (PNG or JPEG, 32..64 px)."""
    rng = np.random.default_rng([seed, 0, index])
    width, height = (int(v) for v in rng.integers(32, 65, size=2))
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        return _encode(img, "PNG", compress_level=1), ".png"
    return _encode(img, "JPEG", quality=85), ".jpg"


def make_synthetic_collection(dest: Path, n: int, seed: int = 0, dup_every: int = 0) -> list[str]:
    """Write ``n`` small images under ``dest`` and return their relpaths, in index order.

    Every image is distinct (random content keyed by ``seed`` and index), 32..64 px a side, PNG or
    JPEG, 100 per folder in ``batch_XXX/folder_YY/``. With ``dup_every = k > 0`` every k-th file
    (index k-1, 2k-1, ...; never index 0) is instead a byte-identical copy of a randomly chosen
    earlier file, keeping that file's suffix. About 3000 files take a few seconds.
    """
    if min(n, seed, dup_every) < 0:
        raise ValueError("n, seed and dup_every must be >= 0")
    rng = np.random.default_rng([seed, 1])  # picks duplicate sources
    relpaths: list[str] = []
    for index in range(n):
        if dup_every and index > 0 and (index + 1) % dup_every == 0:
            source = relpaths[int(rng.integers(0, index))]
            relpath = synthetic_relpath(index, Path(source).suffix)
            _ensure_parent(dest / relpath)
            shutil.copyfile(dest / source, dest / relpath)
        else:
            data, suffix = _synthetic_image(seed, index)
            relpath = synthetic_relpath(index, suffix)
            _ensure_parent(dest / relpath)
            (dest / relpath).write_bytes(data)
        relpaths.append(relpath)
    return relpaths


def _ensure_parent(path: Path) -> None:
    """Create the parent folder of ``path`` once (cheap on repeated calls within a folder)."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
