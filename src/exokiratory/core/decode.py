"""Decode any image into a small canonical RGB *working image* plus metadata.

Canonical working-image rule
----------------------------
All PASS 1 signals are computed on the image resized so that its **longer side
is** :data:`WORKING_SIZE` **pixels**, aspect ratio preserved (the shorter side
is ``round(short * WORKING_SIZE / long)``, at least 1 px).  Images whose longer
side is already ``<= WORKING_SIZE`` are **not upscaled**.  Downscaling is done
in two steps, which is both fast and alias-free:

1. JPEGs are decoded at a reduced DCT scale (``Image.draft``): the smallest
   scale (1/8, 1/4, 1/2, 1) whose output is still ``>=`` the working size.
2. An integer box-filter ``Image.reduce`` by ``factor = floor(scale / 2)``
   (Pillow's ``reducing_gap=2`` convention, premultiplied alpha), followed by
   a ``Image.Resampling.BILINEAR`` resize (support scaled to the ratio, i.e.
   antialiased) to the exact working size.

EXIF orientation (``ImageOps.exif_transpose`` semantics) is applied to the small
image after reduction (cheaper, identical result).  Transparency (alpha band,
``tRNS``/palette transparency) is alpha-composited over ``background``
(default white) after reduction; since both reduction steps use premultiplied
alpha this equals compositing at full size.  Only the first frame of animated or
multi-page files is used.

Transparent images
------------------
The composite depends on the chosen background: five different white overlays
on a transparent canvas all composite to one blank white image.  So for every
image that carries transparency the working image *before* compositing is kept
too, as :attr:`DecodedImage.rgba` (straight, i.e. not premultiplied, colour plus
alpha, same size and orientation as ``rgb``); PASS 1 computes its alpha
statistics and alpha hash from it (:mod:`exokiratory.passes.sense.alpha`).
Fully transparent pixels carry no defined colour there (Pillow's premultiplied
resampling leaves them black).  Images without an alpha band (after the mode
conversion below) have ``rgba = None``.

High bit depth: ``I;16*`` modes are mapped with ``v / 257`` (exact 16->8 bit);
``I`` (32-bit int) is taken as 8-bit if its values lie in 0..255, as 16-bit if
they lie in 0..65535 and min-max stretched otherwise; ``F`` (float) is taken as
0..1 if its values lie in [0, 1], as 0..255 if they lie in [0, 255] and min-max
stretched otherwise (non-finite values become 0).

Memory
------
At most the decoded (possibly DCT-reduced) frame plus one horizontal strip of
about :data:`STRIP_PIXELS` pixels plus the reduced image are alive at a time:
mode conversions and alpha premultiplication run strip by strip on the frame,
never on a full-size copy.  For a 20000x20000 RGB PNG the peak is therefore
about 1.2 GB (the frame) + ~16 MB (strip) + ~36 MB (reduced image); an RGBA or
P one peaks at the frame size (1.6 GB / 400 MB) plus the same small overhead.

Decompression bombs
-------------------
``width * height > max_pixels`` raises :class:`ImageTooLarge` right after the
header is parsed, before any pixel data is decoded.  Pillow's own global guard
(``Image.MAX_IMAGE_PIXELS``, which warns above ~89 Mpx and errors above
~179 Mpx) is suspended *only while this module opens and decodes a file*
(reference-counted under a lock, restored afterwards) so that it does not fire
spuriously below our own, explicit limit.
"""

from __future__ import annotations

import io
import math
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "STRIP_PIXELS",
    "WORKING_SIZE",
    "DecodeError",
    "DecodedImage",
    "ImageTooLarge",
    "load_working_image",
    "working_dims",
]

WORKING_SIZE = 256
"""Longer side, in pixels, of the canonical working image (no upscaling)."""

DEFAULT_MAX_PIXELS = 178_956_970
"""Default decompression-bomb limit (width * height), 2x Pillow's warning limit."""

STRIP_PIXELS = 4_000_000
"""Approximate number of pixels per strip for strip-wise conversion/reduction."""

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image

_TAG_ORIENTATION = ExifTags.Base.Orientation
_TAG_MAKE = ExifTags.Base.Make
_TAG_MODEL = ExifTags.Base.Model
_TAG_DATETIME = ExifTags.Base.DateTime
_TAG_DATETIME_ORIGINAL = ExifTags.Base.DateTimeOriginal
_IFD_EXIF = ExifTags.IFD.Exif

_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

_BIT_DEPTH = {"1": 1, "I": 32, "F": 32}

# Mode conversions done by Pillow (strip-wise); the target is always one of
# L, LA, RGB, RGBA, which ``Image.reduce`` / ``resize`` handle natively.
_PIL_TARGET = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


class ImageTooLarge(ValueError):
    """The image header claims more pixels than the allowed ``max_pixels``."""


class DecodeError(ValueError):
    """The file could not be decoded (corrupt, truncated or unsupported)."""


@dataclass
class DecodedImage:
    """A decoded image reduced to the canonical working size, plus metadata.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 working image (see module docstring for the
            canonical resize rule), EXIF-oriented, alpha composited.
        width: true width in pixels, after EXIF orientation.
        height: true height in pixels, after EXIF orientation.
        format: Pillow format name (``"JPEG"``, ``"PNG"``...), ``""`` if unknown.
        mode: original Pillow mode of the (first) frame, e.g. ``"I;16"``.
        bit_depth: bits per channel in the file: 1, 8, 16 or 32.
        has_alpha: the image has an alpha band or transparency information.
        is_animated: the file holds more than one frame (animation/pages).
        n_frames: number of frames (1 for still images).
        has_exif: an EXIF block with at least one tag is present.
        exif_orientation: raw EXIF orientation tag (1..8) or ``None``.
        camera_make: EXIF ``Make`` or ``None``.
        camera_model: EXIF ``Model`` or ``None``.
        exif_datetime: EXIF ``DateTimeOriginal`` (fallback ``DateTime``) or ``None``.
        icc_profile: an embedded ICC profile is present.
        rgba: ``(H, W, 4)`` uint8 working image before compositing (straight colour and
            alpha; see "Transparent images" in the module docstring), ``None`` for images
            without transparency.
    """

    rgb: np.ndarray
    width: int
    height: int
    format: str
    mode: str
    bit_depth: int
    has_alpha: bool
    is_animated: bool
    n_frames: int
    has_exif: bool
    exif_orientation: int | None
    camera_make: str | None
    camera_model: str | None
    exif_datetime: str | None
    icc_profile: bool
    rgba: np.ndarray | None = None


# --------------------------------------------------------------------------- #
# Pillow's global bomb guard, suspended while we decode (ref-counted).
# --------------------------------------------------------------------------- #
_guard_lock = threading.Lock()
_guard_users = 0
_guard_saved: int | None = None


@contextmanager
def pil_limit_lifted() -> Iterator[None]:
    """Suspend ``Image.MAX_IMAGE_PIXELS`` while our own guard is in charge.

    Reference-counted so that concurrent decodes in several threads restore
    the original value only when the last one leaves.
    """
    global _guard_users, _guard_saved
    with _guard_lock:
        if _guard_users == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _guard_saved


# --------------------------------------------------------------------------- #
# Geometry helpers
# --------------------------------------------------------------------------- #
def working_dims(width: int, height: int, working_size: int = WORKING_SIZE) -> tuple[int, int]:
    """Return the canonical working size for a ``width x height`` image.

    The longer side becomes ``working_size`` (never upscaled), the shorter side
    is scaled proportionally and rounded, with a minimum of 1 px.
    """
    width, height = max(1, width), max(1, height)
    longer = max(width, height)
    if longer <= working_size:
        return width, height
    scale = working_size / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _reduce_factor(size: tuple[int, int], target: tuple[int, int]) -> int:
    """Integer box-reduction factor leaving at least 2x the target size."""
    ratio = min(size[0] / target[0], size[1] / target[1])
    return max(1, int(ratio // 2))


# --------------------------------------------------------------------------- #
# Metadata
# --------------------------------------------------------------------------- #
def _bit_depth(im: Image.Image) -> int:
    """Bits per channel, from the mode and the decoder's raw mode."""
    mode = im.mode
    if mode.startswith("I;16"):
        return 16
    rawmodes: list[str] = []
    for tile in getattr(im, "tile", None) or []:
        args = tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            rawmodes.append(raw)
    if any(";16" in raw for raw in rawmodes):
        return 16
    return _BIT_DEPTH.get(mode, 8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _exif_text(value: object) -> str | None:
    """Normalise an EXIF ASCII value to a stripped string (``None`` if empty)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


@dataclass
class _ExifInfo:
    has_exif: bool = False
    orientation: int | None = None
    make: str | None = None
    model: str | None = None
    datetime: str | None = None


def _read_exif(im: Image.Image) -> _ExifInfo:
    """Read the EXIF fields we keep; a broken EXIF block is treated as absent."""
    try:
        exif = im.getexif()
        sub = exif.get_ifd(_IFD_EXIF) if _IFD_EXIF in exif else {}
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return _ExifInfo()
    orientation = exif.get(_TAG_ORIENTATION)
    try:
        orientation_int = int(orientation) if orientation is not None else None
    except (TypeError, ValueError):
        orientation_int = None
    return _ExifInfo(
        has_exif=len(exif) > 0,
        orientation=orientation_int,
        make=_exif_text(exif.get(_TAG_MAKE)),
        model=_exif_text(exif.get(_TAG_MODEL)),
        datetime=_exif_text(sub.get(_TAG_DATETIME_ORIGINAL)) or _exif_text(exif.get(_TAG_DATETIME)),
    )


def _frame_info(im: Image.Image) -> tuple[bool, int]:
    """``(is_animated, n_frames)``; for GIF this scans frame headers only."""
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    is_animated = bool(getattr(im, "is_animated", n_frames > 1))
    if im.tell() != 0:
        im.seek(0)
    return is_animated, max(1, n_frames)


# --------------------------------------------------------------------------- #
# Pixel conversion
# --------------------------------------------------------------------------- #
def _int_to_l(arr: np.ndarray, lo: float, hi: float) -> Image.Image:
    """Map an integer/float grey array to an ``L`` image using range [lo, hi]."""
    data = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    span = hi - lo
    if span <= 0:
        out = np.zeros(data.shape, dtype=np.uint8)
    else:
        out = np.clip((data - lo) * (255.0 / span) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _unpremultiply_la(strip: Image.Image) -> Image.Image:
    """Premultiplied ``La`` (Pillow has no converter for it) -> ``LA``."""
    arr = np.asarray(strip).astype(np.float32)
    alpha = arr[:, :, 1]
    grey = np.where(alpha > 0, arr[:, :, 0] * 255.0 / np.maximum(alpha, 1.0), 0.0)
    out = np.stack([np.clip(grey + 0.5, 0, 255), alpha], axis=2).astype(np.uint8)
    return Image.fromarray(out, mode="LA")


def _value_range(im: Image.Image) -> tuple[float, float]:
    """Range [lo, hi] that maps to 0..255 for modes ``I`` and ``F``."""
    extrema = im.getextrema()
    lo, hi = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    if im.mode == "F":
        if not (math.isfinite(lo) and math.isfinite(hi)):
            arr = np.asarray(im)
            finite = arr[np.isfinite(arr)]
            if finite.size == 0:
                return 0.0, 1.0
            lo, hi = float(finite.min()), float(finite.max())
        if lo >= 0 and hi <= 1:
            return 0.0, 1.0
        if lo >= 0 and hi <= 255:
            return 0.0, 255.0
        return lo, hi
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    if lo >= 0 and hi <= 65535:
        return 0.0, 65535.0
    return lo, hi


def _strip_converter(im: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """Return a function converting a strip of ``im`` to L, LA, RGB or RGBA."""
    mode = im.mode
    if mode.startswith("I;16"):
        return lambda strip: _int_to_l(np.asarray(strip), 0.0, 65535.0)
    if mode in ("I", "F"):
        lo, hi = _value_range(im)
        return lambda strip: _int_to_l(np.asarray(strip), lo, hi)
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in im.info):
        # palette, or a tRNS colour key (Pillow turns both into an alpha band)
        alpha_target = "LA" if mode == "L" else "RGBA"
        target = alpha_target if "transparency" in im.info else "RGB"
    elif mode == "La":
        return _unpremultiply_la
    elif mode == "RGBa":
        target = "RGBA"
    else:
        target = _PIL_TARGET.get(mode, "RGBA")
    if target == mode:
        return lambda strip: strip
    return lambda strip: strip.convert(target)


def _reduce_strips(
    im: Image.Image, factor: int, convert: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """Convert and box-reduce ``im`` strip by strip (bounded extra memory)."""
    width, height = im.size
    if factor <= 1 and width * height <= STRIP_PIXELS:
        return convert(im)
    rows = max(factor, (STRIP_PIXELS // max(1, width)) // factor * factor)
    out: Image.Image | None = None
    for top in range(0, height, rows):
        strip = convert(im.crop((0, top, width, min(height, top + rows))))
        small = strip.reduce(factor) if factor > 1 else strip
        if out is None:
            size = (-(-width // factor), -(-height // factor))
            out = Image.new(small.mode, size)
        out.paste(small, (0, top // factor))
    if out is None:  # pragma: no cover - height is always >= 1
        raise DecodeError("image has no rows")
    return out


def _to_rgb_array(
    im: Image.Image, background: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Composite an L/LA/RGB/RGBA image over ``background`` -> (H, W, 3) uint8, plus the
    straight RGBA array before compositing (``None`` without an alpha band)."""
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    n_colour = 1 if im.mode in ("L", "LA") else 3
    colour = arr[:, :, :n_colour]
    if im.mode in ("LA", "RGBA"):
        alpha_u8 = arr[:, :, n_colour:]
        alpha = alpha_u8.astype(np.float32) * (1.0 / 255.0)
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        mixed = colour.astype(np.float32) * alpha + bg * (1.0 - alpha)
        rgb = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        rgba = np.concatenate([np.broadcast_to(colour, (*colour.shape[:2], 3)), alpha_u8], 2)
        return rgb, np.ascontiguousarray(rgba)
    if n_colour == 1:
        return np.ascontiguousarray(np.repeat(colour, 3, axis=2)), None
    return np.ascontiguousarray(colour), None


def _to_working(
    im: Image.Image, target: tuple[int, int], background: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded frame -> working-size composited RGB array and straight RGBA array (``None``
    without alpha), both before orientation."""
    convert = _strip_converter(im)
    factor = _reduce_factor(im.size, target)
    small = _reduce_strips(im, factor, convert)
    if small.size != target:
        small = small.resize(target, Image.Resampling.BILINEAR)
    return _to_rgb_array(small, background)


def _orient(rgb: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, 3) or (H, W, 4) array."""
    if orientation is None or orientation not in _TRANSPOSE:
        return rgb
    mode = "RGBA" if rgb.shape[2] == 4 else "RGB"
    small = Image.fromarray(rgb, mode=mode).transpose(_TRANSPOSE[orientation])
    return np.asarray(small).copy()


# --------------------------------------------------------------------------- #
# Opening
# --------------------------------------------------------------------------- #
@contextmanager
def _binary_stream(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes],
) -> Iterator[IO[bytes]]:
    """Yield a binary stream for ``source``; files we open are closed after."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            yield fh
    else:
        yield source


def _decode_reason(exc: BaseException) -> str:
    """Human-readable reason for a decoding failure."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "truncated" in lowered or isinstance(exc, EOFError):
        return f"truncated file ({text})"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {text})"


_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)


def _draft_jpeg(im: Image.Image, target: tuple[int, int]) -> None:
    """Ask the JPEG decoder for the smallest DCT scale still >= ``target``."""
    if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
        im.draft(im.mode, target)


def _decode(
    im: Image.Image, working_size: int, max_pixels: int, background: tuple[int, int, int]
) -> DecodedImage:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} pixels (possible decompression bomb); not decoded"
        )
    fmt, mode, bit_depth, has_alpha = im.format or "", im.mode, _bit_depth(im), _has_alpha(im)
    icc = bool(im.info.get("icc_profile"))
    try:
        is_animated, n_frames = _frame_info(im)
        target = working_dims(width, height, working_size)
        _draft_jpeg(im, target)
        im.load()
        exif = _read_exif(im)
        rgb, rgba = _to_working(im, target, background)
    except (ImageTooLarge, DecodeError):
        raise
    except _DECODE_ERRORS as exc:
        raise DecodeError(_decode_reason(exc)) from exc
    orientation = exif.orientation
    rgb = _orient(rgb, orientation)
    rgba = None if rgba is None else _orient(rgba, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(
        rgb=rgb,
        width=width,
        height=height,
        format=fmt,
        mode=mode,
        bit_depth=bit_depth,
        has_alpha=has_alpha,
        is_animated=is_animated,
        n_frames=n_frames,
        has_exif=exif.has_exif,
        exif_orientation=orientation,
        camera_make=exif.make,
        camera_model=exif.model,
        exif_datetime=exif.datetime,
        icc_profile=icc or bool(im.info.get("icc_profile")),
        rgba=rgba,
    )


def load_working_image(
    source: Source,
    working_size: int = WORKING_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Decode ``source`` into a :class:`DecodedImage` at the canonical working size.

    Args:
        source: a path (``str``/``PathLike``), the encoded bytes, a binary
            file object (read from its start, not closed), or an already
            opened ``PIL.Image.Image`` (not closed; useful for modes no file
            format can store, e.g. ``HSV``).
        working_size: longer side of the working image (no upscaling).
        max_pixels: decompression-bomb limit on ``width * height``.
        background: RGB colour transparent pixels are composited on.

    Raises:
        ImageTooLarge: the header claims more than ``max_pixels`` pixels
            (raised before any pixel data is decoded).
        DecodeError: the data is not an image, is truncated or is corrupt.
        OSError: the path cannot be opened (missing file, permissions...).
    """
    if working_size < 1:
        raise ValueError("working_size must be >= 1")
    if isinstance(source, Image.Image):
        with pil_limit_lifted():
            return _decode(source, working_size, max_pixels, background)
    with _binary_stream(source) as stream, pil_limit_lifted():
        try:
            im = Image.open(stream)
        except _DECODE_ERRORS as exc:
            raise DecodeError(_decode_reason(exc)) from exc
        with im:
            return _decode(im, working_size, max_pixels, background)
