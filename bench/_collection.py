"""Build a benchmark collection of real images (re-encoded photos from the skimage/sklearn wheels)."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from exokiratory.demo.data import SAMPLE_PHOTOS


def real_photo_paths() -> list[Path]:
    import skimage
    import sklearn

    sk = Path(skimage.__file__).parent / "data"
    names = [*SAMPLE_PHOTOS, "page.png", "text.png", "color.png", "logo.png"]
    out = [sk / n for n in names if (sk / n).exists()]
    out += [
        Path(sklearn.__file__).parent / "datasets" / "images" / n
        for n in ("china.jpg", "flower.jpg")
    ]
    return out


def build_collection(dest: Path, n_files: int, seed: int = 0, max_side: int = 1600) -> int:
    """Write ``n_files`` distinct JPEG/PNG variants (crops, scales, qualities) of real photos.

    Returns the total number of bytes written. Deterministic for a seed.
    """
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in real_photo_paths()]
    total = 0
    for i in range(n_files):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = im.crop((x, y, x + cw, y + ch))
        scale = rng.uniform(1.0, 2.0) if max(cw, ch) < max_side // 2 else rng.uniform(0.5, 1.0)
        crop = crop.resize((max(8, int(cw * scale)), max(8, int(ch * scale))))
        buf = io.BytesIO()
        if i % 4 == 0:
            crop.save(buf, "PNG", compress_level=1)
            ext = "png"
        else:
            crop.save(buf, "JPEG", quality=rng.randint(75, 95))
            ext = "jpg"
        folder = dest / f"roll_{i // 250:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:06d}.{ext}").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def build_camera_collection(
    dest: Path, n_files: int, seed: int = 0, size: tuple[int, int] = (4000, 3000)
) -> int:
    """``n_files`` camera-sized JPEGs (default 12 Mpx, quality 90): crops of the real photos
    scaled up, with Gaussian sensor-like noise so that they compress like real camera files
    (a few MB each). Returns the total bytes written."""
    import numpy as np

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in real_photo_paths()]
    noise = nrng.normal(0, 6, (size[1], size[0], 3)).astype(np.int16)
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        big = np.asarray(
            im.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR), np.int16
        )
        shift = rng.randint(0, 1000)
        arr = np.clip(big + np.roll(noise, shift, axis=1), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        (dest / f"DSC_{i:05d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total
