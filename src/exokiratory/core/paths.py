"""Stored paths: every path is kept as valid UTF-8 text, losslessly.

A local file name may be any bytes (``b"\\xff\\xfe.jpg"``); Python gives such names as strings
with lone surrogates (PEP 383), which Parquet, DuckDB and JSON cannot hold. Such a path is
stored as ``nonutf8:`` followed by its bytes decoded as UTF-8 where they are valid, each other
byte written ``\\xHH`` and each backslash doubled: ``nonutf8:/photos/\\xff\\xfe.jpg``. The
prefix cannot start a real stored path (local paths are absolute, remote ones are URLs), so a
path without it is exactly the name the file system gave, and :func:`from_stored` returns the
original name for opening. Object-store keys are always UTF-8 and never take the prefix.
"""

from __future__ import annotations

import os
import re

PREFIX = "nonutf8:"
_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def to_stored(path: str) -> str:
    """The stored (valid UTF-8) form of a path the file system gave."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return PREFIX + raw.decode("utf-8", "backslashreplace")


def from_stored(stored: str) -> str:
    """The path to open (the file system's own name) for a stored path."""
    if not stored.startswith(PREFIX):
        return stored
    text = stored[len(PREFIX) :]
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        out += b"\\" if m.group(1) is None else bytes([int(m.group(1), 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))
