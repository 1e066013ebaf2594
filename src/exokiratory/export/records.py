"""Helpers the formats share: file names, plain (CSV/JSON-safe) values, Arrow types."""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
from typing import Any

import pyarrow as pa

#: file extension by the image format recorded at scan time
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "MPO": ".jpg",
    "HEIF": ".heic",
    "AVIF": ".avif",
    "ICO": ".ico",
}
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def extension(path: str, fmt: str | None) -> str:
    """The file extension for an image: its path's (lower case) when it has one, else its
    format's."""
    ext = posixpath.splitext(path.rsplit("?", 1)[0])[1].lower()
    if 1 < len(ext) <= 6 and ext[1:].isalnum():
        return ext
    return FORMAT_EXTENSIONS.get((fmt or "").upper(), ".img")


def image_file_name(record: dict[str, Any]) -> str:
    return f"{record['image_id']}{extension(str(record['path']), record.get('format'))}"


def safe_folder(value: object) -> str:
    """A folder name for a group-by value (``null`` for a missing one)."""
    if value is None:
        return "null"
    text = _SAFE.sub("_", str(value)).strip("._") or "_"
    return text[:100]


def json_default(v: object) -> object:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, default=json_default, ensure_ascii=False)


def portable_type(t: pa.DataType) -> pa.DataType:
    """float16 -> float32 and fixed-size lists -> lists (what every reader takes)."""
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(portable_type(t.value_type))
    return t


def portable_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(portable_type(f.type)) for f in schema])


def plain_table(table: pa.Table) -> pa.Table:
    """Nested and binary columns as JSON text, so CSV can hold them."""
    cols = []
    for col in table.columns:
        if pa.types.is_nested(col.type) or pa.types.is_binary(col.type):
            cols.append(
                pa.array(
                    [
                        None if v is None else json.dumps(v, default=json_default)
                        for v in col.to_pylist()
                    ],
                    pa.string(),
                )
            )
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)
