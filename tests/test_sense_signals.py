"""Tests for PASS 1 decoding (sense.decode) and global signals (sense.signals)."""

from __future__ import annotations

import io
import math
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from exokiratory.core.decode import (
    WORKING_SIZE,
    DecodedImage,
    DecodeError,
    ImageTooLarge,
    load_working_image,
)
from exokiratory.passes.sense.signals import SIGNALS_SCHEMA, compute_signals

from .conftest import NATURAL_PHOTOS

skimage = pytest.importorskip("skimage")
sklearn = pytest.importorskip("sklearn")

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"

# Mode -> file format able to store it (None: pass the in-memory PIL image).
MODES = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "PA": "TIFF",
    "RGB": "PNG",
    "RGBA": "PNG",
    "CMYK": "JPEG",
    "YCbCr": "TIFF",
    "I;16": "PNG",
    "I;16B": "TIFF",
    "I": "TIFF",
    "F": "TIFF",
    "LAB": "TIFF",
    "HSV": None,
}


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _sample(mode: str, size: tuple[int, int] = (90, 60)) -> Image.Image:
    """A non-trivial test image of the given mode (gradient + noise)."""
    rng = np.random.default_rng(0)
    w, h = size
    base = (np.linspace(0, 255, w)[None, :] + rng.normal(0, 20, (h, w))).clip(0, 255)
    rgb = np.stack([base, base[::-1], 255 - base], axis=2).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        return Image.fromarray((base * 257).astype(np.uint16))
    if mode == "I;16B":
        return Image.frombytes(mode, (w, h), (base * 257).astype(">u2").tobytes())
    if mode == "I":
        return Image.fromarray((base * 257).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray((base / 255.0).astype(np.float32), "F")
    if mode == "PA":
        return im.convert("P").convert("PA")
    if mode == "P" or mode in ("HSV", "LAB", "YCbCr", "CMYK"):
        return im.convert(mode)
    return im.convert(mode)


def _decode(im: Image.Image, fmt: str | None, **kwargs: object) -> DecodedImage:
    if fmt is None:
        return load_working_image(im, **kwargs)  # type: ignore[arg-type]
    return load_working_image(_encode(im, fmt), **kwargs)  # type: ignore[arg-type]


def _check_signals(sig: dict[str, object]) -> None:
    """Output matches the schema exactly and holds only finite numbers."""
    assert list(sig) == SIGNALS_SCHEMA.names
    table = pa.Table.from_pylist([sig], schema=SIGNALS_SCHEMA)
    assert table.schema.equals(SIGNALS_SCHEMA)
    for field in SIGNALS_SCHEMA:
        value = sig[field.name]
        if pa.types.is_fixed_size_list(field.type):
            assert isinstance(value, list)
            assert len(value) == field.type.list_size
            assert all(math.isfinite(v) for v in value)
        elif pa.types.is_integer(field.type):
            assert isinstance(value, int)
        else:
            assert isinstance(value, float)
            assert math.isfinite(value), field.name


def _signals_of(path: Path) -> dict[str, object]:
    return compute_signals(load_working_image(path))


# --------------------------------------------------------------------------- #
# Decoding
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_decodes(mode: str) -> None:
    im = _sample(mode, (600, 300))
    assert im.mode == mode
    decoded = _decode(im, MODES[mode])
    assert decoded.rgb.dtype == np.uint8
    assert decoded.rgb.shape == (128, 256, 3)
    assert (decoded.width, decoded.height) == (600, 300)
    assert decoded.rgb.std() > 1.0  # not a blank image
    _check_signals(compute_signals(decoded))


def test_small_images_are_not_upscaled() -> None:
    decoded = load_working_image(_encode(_sample("RGB", (40, 30)), "PNG"))
    assert decoded.rgb.shape == (30, 40, 3)


def test_jpeg_uses_draft_and_keeps_canonical_size() -> None:
    im = _sample("RGB", (2000, 1000))
    decoded = load_working_image(_encode(im, "JPEG", quality=90))
    assert decoded.rgb.shape == (WORKING_SIZE // 2, WORKING_SIZE, 3)
    reference = np.asarray(im.resize((256, 128), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(decoded.rgb.astype(np.float32) - reference).mean() < 6.0


def test_exif_orientation_6_swaps_width_and_height() -> None:
    im = Image.new("RGB", (600, 300), (200, 10, 10))
    im.paste((10, 10, 200), (0, 0, 300, 300))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "ACME"
    exif[0x0110] = "Cam 1"
    decoded = load_working_image(_encode(im, "JPEG", exif=exif))
    assert (decoded.width, decoded.height) == (300, 600)
    assert decoded.rgb.shape == (256, 128, 3)
    assert decoded.exif_orientation == 6
    assert decoded.has_exif
    assert (decoded.camera_make, decoded.camera_model) == ("ACME", "Cam 1")
    # rotated 90 degrees clockwise: the former left (blue) half is now on top
    assert decoded.rgb[10, 64, 2] > 150
    assert decoded.rgb[-10, 64, 0] > 150


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        frame.paste(i, (0, 0, 20, 10))
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = load_working_image(data)
    assert decoded.is_animated
    assert decoded.n_frames == 3
    assert decoded.format == "GIF"
    assert tuple(decoded.rgb[5, 5]) == (0, 0, 0)  # first frame


def test_16_bit_png() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)
    decoded = load_working_image(_encode(Image.fromarray(ramp), "PNG"))
    assert decoded.bit_depth == 16
    assert decoded.rgb[0, 0, 0] == 0
    assert decoded.rgb[0, -1, 0] == 255
    assert 120 <= decoded.rgb[0, 32, 0] <= 135


def test_bit_depths_and_flags() -> None:
    assert load_working_image(_encode(_sample("1"), "PNG")).bit_depth == 1
    rgb = load_working_image(_encode(_sample("RGB"), "PNG"))
    assert (rgb.bit_depth, rgb.has_alpha, rgb.is_animated, rgb.n_frames) == (8, False, False, 1)
    assert load_working_image(_encode(_sample("F"), "TIFF")).bit_depth == 32


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_composited_on_background(mode: str) -> None:
    im = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 20, 20))  # left half opaque red
    im = im.convert(mode)
    for background in ((255, 255, 255), (0, 128, 0)):
        decoded = _decode(im, MODES[mode], background=background)
        assert decoded.has_alpha
        assert tuple(decoded.rgb[10, 35]) == background
        assert decoded.rgb[10, 5, 0] > 70  # opaque part keeps its colour


def test_palette_transparency_is_composited() -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([255, 0, 0] * 256)
    data = _encode(im, "PNG", transparency=0)
    decoded = load_working_image(data, background=(0, 0, 255))
    assert decoded.has_alpha
    assert tuple(decoded.rgb[0, 0]) == (0, 0, 255)


def test_sources_path_bytes_and_file_object(tmp_path: Path) -> None:
    data = _encode(_sample("RGB"), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    from_path = load_working_image(path)
    from_str = load_working_image(str(path))
    with path.open("rb") as fh:
        from_file = load_working_image(fh)
        assert not fh.closed
    from_bytes = load_working_image(data)
    for other in (from_str, from_file, from_bytes):
        assert np.array_equal(other.rgb, from_path.rgb)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(tag: bytes, payload: bytes) -> bytes:
        body = tag + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bomb_guard_raises_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        load_working_image(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLarge):
        load_working_image(_encode(Image.new("RGB", (1, 1)), "PNG"), max_pixels=0)
    assert issubclass(ImageTooLarge, ValueError)


def test_no_pil_bomb_warning_below_our_limit() -> None:
    before = Image.MAX_IMAGE_PIXELS
    # 100 Mpx header: above PIL's warning limit, below ours; data is truncated.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DecodeError):
            load_working_image(_png_header_only(10_000, 10_000))
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_raise_decode_error(fmt: str) -> None:
    data = _encode(_sample("RGB", (300, 200)), fmt)
    for cut in (len(data) // 2, 60):
        with pytest.raises(DecodeError, match=r"truncated|corrupt"):
            load_working_image(data[:cut])
    with pytest.raises(DecodeError):
        load_working_image(b"definitely not an image")


# --------------------------------------------------------------------------- #
# Signals
# --------------------------------------------------------------------------- #
def test_schema_matches_output_and_histograms_sum_to_one() -> None:
    sig = _signals_of(SKIMAGE_DATA / "astronaut.png")
    _check_signals(sig)
    for name in ("rgb_hist", "lab_hist"):
        hist = np.asarray(sig[name]).reshape(3, 16)
        assert np.allclose(hist.sum(axis=1), 1.0, atol=1e-5)
        assert (hist >= 0).all()
    assert math.isclose(sum(sig["fft_band_energy"]), 1.0, abs_tol=1e-5)  # type: ignore[arg-type]
    assert sig["working_width"] == sig["working_height"] == 256
    assert sig["aspect_ratio"] == 1.0
    assert 0.0 <= sig["brightness_p01"] <= sig["brightness_p50"] <= sig["brightness_p99"] <= 1.0  # type: ignore[operator]


def test_grey_image_has_zero_grayscale_score() -> None:
    grey = load_working_image(SKIMAGE_DATA / "camera.png")
    sig = compute_signals(grey)
    assert sig["grayscale_score"] < 1e-3  # type: ignore[operator]
    assert sig["colorfulness_score"] < 1e-3  # type: ignore[operator]
    assert sig["saturation_mean"] == 0.0
    colour = _signals_of(SKIMAGE_DATA / "coffee.png")
    assert colour["grayscale_score"] > 10  # type: ignore[operator]


def test_blur_lowers_sharpness_and_raises_blur_score() -> None:
    im = Image.open(SKIMAGE_DATA / "camera.png")
    sharp = compute_signals(load_working_image(_encode(im, "PNG")))
    blurred_im = im.filter(ImageFilter.GaussianBlur(3))
    blurred = compute_signals(load_working_image(_encode(blurred_im, "PNG")))
    assert blurred["sharpness_score"] < sharp["sharpness_score"]  # type: ignore[operator]
    assert blurred["blur_score"] > sharp["blur_score"]  # type: ignore[operator]
    assert blurred["high_freq_ratio"] < sharp["high_freq_ratio"]  # type: ignore[operator]


def test_noise_score_grows_with_noise() -> None:
    base = np.asarray(Image.open(SKIMAGE_DATA / "coffee.png").resize((256, 170)), np.float32)
    rng = np.random.default_rng(1)
    scores = []
    for sigma in (0.0, 5.0, 15.0, 30.0):
        noisy = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
        sig = compute_signals(load_working_image(Image.fromarray(noisy)))
        scores.append(sig["noise_score"])
    assert scores == sorted(scores)
    assert scores[-1] > 3 * scores[0]  # type: ignore[operator]


def test_degenerate_sizes() -> None:
    for size in ((1, 1), (20000, 20), (20, 20000), (2, 2), (3, 1)):
        im = Image.new("RGB", size, (10, 20, 30))
        sig = compute_signals(load_working_image(im))
        _check_signals(sig)
        assert sig["n_colors"] == 1
        assert sum(sig["fft_band_energy"]) == 0.0  # type: ignore[arg-type]


def _render_text_page(size: tuple[int, int], font_size: int, seed: int) -> Image.Image:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    words += ["while", "data", "flows"]
    rnd = random.Random(seed)
    im = Image.new("RGB", size, (248, 248, 245))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    y = 30
    while y < size[1] - 30 - font_size:
        line = " ".join(rnd.choice(words) for _ in range(40))
        while font.getlength(line) > size[0] - 60:
            line = line.rsplit(" ", 1)[0]
        draw.text((30, y), line, font=font, fill=(25, 25, 25))
        y += int(font_size * 1.4)
    return im


TEXT_IMAGES = ["page.png", "text.png"]
PHOTOS = NATURAL_PHOTOS[:10]


def test_text_likeness_separates_text_from_photos() -> None:
    text_scores = [_signals_of(SKIMAGE_DATA / n)["text_likeness_score"] for n in TEXT_IMAGES]
    for i, (size, font_size) in enumerate(
        [((800, 1000), 14), ((1200, 900), 18), ((600, 800), 24), ((1024, 768), 16)]
    ):
        page = _render_text_page(size, font_size, seed=i)
        text_scores.append(compute_signals(load_working_image(page))["text_likeness_score"])
    photo_paths = [SKIMAGE_DATA / n for n in PHOTOS]
    photo_paths += [SKLEARN_IMAGES / "china.jpg", SKLEARN_IMAGES / "flower.jpg"]
    photo_scores = [_signals_of(p)["text_likeness_score"] for p in photo_paths]
    assert min(text_scores) > 0.6, text_scores  # type: ignore[operator]
    assert max(photo_scores) < 0.2, photo_scores  # type: ignore[operator]
    assert all(0.0 <= s <= 1.0 for s in text_scores + photo_scores)  # type: ignore[operator]


# --------------------------------------------------------------------------- #
# Property test
# --------------------------------------------------------------------------- #
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    mode=st.sampled_from(sorted(MODES)),
    seed=st.integers(0, 2**16),
    encode=st.booleans(),
)
def test_random_images_never_crash(
    width: int, height: int, mode: str, seed: int, encode: bool
) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if rng.random() < 0.3:
        rgb[:] = rgb[0, 0]  # flat image
    if mode in ("I;16", "I;16B", "I", "F", "PA") or rng.random() < 0.5:
        im = _sample(mode, (width, height))
    else:
        im = Image.fromarray(rgb, "RGB").convert(mode)
    fmt = MODES[mode] if encode else None
    decoded = _decode(im, fmt)
    assert decoded.rgb.dtype == np.uint8
    assert max(decoded.rgb.shape[:2]) == min(max(width, height), WORKING_SIZE)
    _check_signals(compute_signals(decoded))
