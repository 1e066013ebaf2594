"""Reading one file for PASS 0: SHA-256 of its bytes, its format by magic bytes, its header.

Only the header is parsed (Pillow's lazy ``open``), never the pixels, so a scan costs about one
read of each new file. What is checked here: empty files, non-images, unparseable headers, a
missing end marker (truncation) and decompression bombs (header pixel count over the limit).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, UnidentifiedImageError

from exokiratory.core.decode import pil_limit_lifted
from exokiratory.core.paths import from_stored
from exokiratory.passes.scan.sniff import (
    HEAD_BYTES,
    IMAGE_EXTENSIONS,
    TAIL_BYTES,
    describe_non_image,
    sniff_format,
    truncation_reason,
)

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileInfo:
    """The outcome of reading one file.

    ``kind`` is ``image`` (an image ID exists; ``status`` ok or unreadable), ``ignored`` (not an
    image and no image extension: no ID) or ``error`` (the bytes could not be read: no ID).
    """

    kind: str
    sha256: str | None = None
    size: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    status: str | None = None
    error: str | None = None

    @property
    def image_id(self) -> str | None:
        return self.sha256[:32] if self.sha256 else None


def inspect_file(path: str, fs: Any | None, max_pixels: int) -> FileInfo:
    """Hash and inspect one file. ``fs`` is None for local paths, else an fsspec file system."""
    try:
        digest, size, head, tail, data = _read(path, fs)
    except FileNotFoundError:
        return FileInfo("error", error="file vanished during the scan")
    except IsADirectoryError:
        return FileInfo("error", error="is a folder")
    except PermissionError as exc:
        return FileInfo("error", error=f"permission denied: {exc.strerror or exc}")
    except OSError as exc:
        return FileInfo("error", error=f"cannot read: {exc.strerror or exc}")
    return classify(path, digest, size, head, tail, data, fs, max_pixels)


def _read(path: str, fs: Any | None) -> tuple[str, int, bytes, bytes, bytes | None]:
    """SHA-256, size, first and last bytes; remote files are kept in memory for the header."""
    if fs is None:
        h = hashlib.sha256()
        size = 0
        head = b""
        tail = b""
        with open(from_stored(path), "rb", buffering=0) as fh:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                if size == 0:
                    head = bytes(view[:HEAD_BYTES])
                size += n
                tail = (tail + bytes(view[max(0, n - TAIL_BYTES) : n]))[-TAIL_BYTES:]
        return h.hexdigest(), size, head, tail, None
    with fs.open(path, "rb") as fh:
        data = fh.read()
    return hashlib.sha256(data).hexdigest(), len(data), data[:HEAD_BYTES], data[-TAIL_BYTES:], data


def classify(
    path: str,
    digest: str,
    size: int,
    head: bytes,
    tail: bytes,
    data: bytes | None,
    fs: Any | None,
    max_pixels: int,
) -> FileInfo:
    fmt = sniff_format(head)
    has_image_ext = _extension(path) in IMAGE_EXTENSIONS
    if fmt is None:
        if size == 0:
            reason = "empty file (0 bytes)"
        else:
            reason = f"not an image: content is {describe_non_image(head)}"
        if not has_image_ext:
            return FileInfo("ignored", size=size, error=reason)
        return FileInfo("image", digest, size, None, status="unreadable", error=reason)
    trunc = truncation_reason(fmt, tail)
    width, height, header_error = _header(path, data, fs)
    base = FileInfo("image", digest, size, fmt, width, height, "ok")
    if header_error is not None:
        return _with(base, status="unreadable", error=header_error)
    if width is not None and height is not None and width * height > max_pixels:
        return _with(
            base,
            status="unreadable",
            error=(
                f"decompression bomb: {width}x{height} = {width * height} px exceeds "
                f"max_image_pixels={max_pixels}"
            ),
        )
    if trunc is not None:
        return _with(base, status="unreadable", error=trunc)
    return base


def _with(info: FileInfo, **changes: Any) -> FileInfo:
    return replace(info, **changes)


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _header(
    path: str, data: bytes | None, fs: Any | None
) -> tuple[int | None, int | None, str | None]:
    """Width and height from the header (EXIF orientation not applied), or an error text."""
    try:
        # our own limit (scan.max_image_pixels) judges the header size; Pillow's would refuse
        # large legitimate images at open(), so it is lifted while we look
        with warnings.catch_warnings(), pil_limit_lifted():
            warnings.simplefilter("ignore")
            if data is not None:
                with Image.open(io.BytesIO(data)) as im:
                    return int(im.width), int(im.height), None
            with Image.open(from_stored(path)) as im:
                return int(im.width), int(im.height), None
    except UnidentifiedImageError:
        return None, None, "cannot parse image header (no decoder for this format or corrupt)"
    except (OSError, SyntaxError, ValueError) as exc:
        return None, None, f"cannot parse image header: {exc}"
