"""Image-ness by magic bytes, not by extension, plus cheap structural checks on the file's tail."""

from __future__ import annotations

#: Number of leading bytes :func:`sniff_format` needs.
HEAD_BYTES = 32
#: Number of trailing bytes kept for :func:`truncation_reason`.
TAIL_BYTES = 4096

#: File-name extensions that users expect to be images. A file with one of these that is not an
#: image by its bytes is recorded as ``unreadable``; other non-image files are ignored.
IMAGE_EXTENSIONS = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".jp2",
        ".j2k",
        ".jpx",
        ".ico",
        ".psd",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".qoi",
        ".jxl",
        ".dng",
        ".cr2",
        ".nef",
        ".arw",
        ".xpm",
    ]
)


def sniff_format(head: bytes) -> str | None:
    """Return a format name for the first bytes of a file, or ``None`` when it is not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIF"
        if brand in (b"jp2 ", b"jpx "):
            return "JPEG2000"
        return None
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:2] in (b"\xff\x0a",) or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEGXL"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "PPM"
    if head.startswith(b"/* XPM */"):  # X PixMap, a C source text (Pillow's XPM reader's test)
        return "XPM"
    return None


def truncation_reason(fmt: str, tail: bytes) -> str | None:
    """A reason when the file's end shows it was cut short; ``None`` when it looks whole.

    Only formats with a mandatory end marker are checked: JPEG (EOI ``FFD9``), PNG (``IEND``
    chunk) and GIF (trailer ``3B``). Trailing padding after the marker (common on cameras) is
    accepted: the marker must appear in the last :data:`TAIL_BYTES` bytes. A full decode, which
    finds damage inside the file, happens in PASS 1.
    """
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG: no end-of-image marker (FFD9)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG: no IEND chunk"
    if fmt == "GIF" and b"\x3b" not in tail[-64:]:
        return "truncated GIF: no trailer byte (3B)"
    return None


def describe_non_image(head: bytes) -> str:
    """A short human description of what a non-image file looks like."""
    if not head:
        return "empty"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    sample = head[:HEAD_BYTES]
    try:
        sample.decode("utf-8")
        if all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
            return "text"
    except UnicodeDecodeError:
        pass
    return f"unknown bytes {sample[:8].hex()}"
