"""What an export takes: a stored sample (newest version, or ``NAME@VERSION``) or the images a
SQL condition selects, with their current paths and the columns asked for.

Every exported record has ``image_id``, ``image_idx``, ``path`` (a current path of the image,
else the path it was first seen at), ``width``, ``height``, ``format``; a sample adds
``sample``, ``version``, ``rank``, ``stratum``. ``columns`` adds per-image columns by name
(see :mod:`exokiratory.passes.sample.columns`); a name with ``*`` or ``?`` is a pattern
(``is_*``, ``cluster_*``, ``flags.*``), and an unknown name is an error listing the available
ones.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from exokiratory.core.catalog import Catalog
from exokiratory.passes.sample.columns import (
    ImageColumn,
    ImageColumns,
    UnknownColumnError,
    with_columns_sql,
)
from exokiratory.passes.sample.population import filtered_images_sql
from exokiratory.passes.sample.sampler import sample_members

BASE_COLUMNS = ("image_id", "image_idx", "path", "width", "height", "format")
SAMPLE_COLUMNS = ("sample", "version", "rank", "stratum")
#: internal columns of a selection, not exported
INTERNAL = ("source", "size_bytes")

_CURRENT_PATHS = "SELECT * FROM image_paths"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Selection:
    """The records to export, in export order, and the names of the exported columns."""

    table: pa.Table
    label: str
    columns: list[str]

    @property
    def digest(self) -> str:
        """Identifies the selection (ids in order, columns): a resumed export must match it."""
        h = hashlib.sha256("\0".join(self.columns).encode())
        for i in self.table.column("image_id").to_pylist():
            h.update(i.encode())
        return h.hexdigest()[:32]


def parse_sample_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        raise ValueError(f"bad sample reference {ref!r}: NAME or NAME@VERSION")
    return name, int(version) if version else None


def expand_columns(
    cols: ImageColumns, names: Sequence[str], optional: bool = False
) -> list[ImageColumn]:
    """Names and patterns to columns (patterns match the plain names, or ``view.column`` ones
    when they hold a dot); ``optional``: names nothing matches are dropped, not errors."""
    if not names:
        return []
    avail = cols.available()
    wanted: list[str] = []
    for n in names:
        if any(ch in n for ch in "*?["):
            pool = [a for a in avail if ("." in a) == ("." in n)]
            hits = fnmatch.filter(pool, n)
            if not hits and not optional:
                raise UnknownColumnError(
                    f"no column matches {n!r}; available: {', '.join(a for a in avail if '.' not in a)}"
                )
            wanted += hits
        elif n in avail or not optional:
            wanted.append(n)
    return cols.resolve(wanted)


def select(
    catalog: Catalog,
    *,
    sample: str | None = None,
    where: str | None = None,
    columns: Sequence[str] = (),
    optional_columns: Sequence[str] = (),
) -> Selection:
    """The records of a sample (``NAME`` / ``NAME@VERSION``) or of ``where`` over the images
    (and their flags), with ``columns`` (errors when unknown) and ``optional_columns`` (those
    that exist)."""
    if (sample is None) == (where is None):
        raise ValueError("export a sample NAME or the images of --where SQL (one of them)")
    paths = (
        "i.image_id, i.image_idx, coalesce(p.path, i.first_path) AS path, p.source, "
        "i.width, i.height, i.format, i.size_bytes"
    )
    if sample is not None:
        name, version = parse_sample_ref(sample)
        members = sample_members(catalog, name, version)
        version = int(members.column("version")[0].as_py())
        base = (
            f"SELECT {paths}, s.sample, s.version, s.rank, s.stratum FROM samples s "
            f"JOIN images i USING (image_id) LEFT JOIN ({_CURRENT_PATHS}) p USING (image_id) "
            f"WHERE s.sample = {_lit(name)} AND s.version = {version}"
        )
        order, label = "rank", f"sample {name} v{version}"
    else:
        ids = f"SELECT image_id FROM ({filtered_images_sql(catalog, where)})"
        base = (
            f"SELECT {paths} FROM images i LEFT JOIN ({_CURRENT_PATHS}) p USING (image_id) "
            f"WHERE i.image_id IN ({ids})"
        )
        order, label = "image_idx", f"images where {where}"
    taken = {*BASE_COLUMNS, *SAMPLE_COLUMNS, *INTERNAL}
    resolver = ImageColumns(catalog)
    chosen = expand_columns(resolver, [c for c in columns if c not in taken]) + expand_columns(
        resolver, optional_columns, optional=True
    )
    extra = [c for c in dict.fromkeys(chosen) if c.name not in taken]
    table = catalog.query(with_columns_sql(base, extra, order))
    names = [c for c in table.column_names if c not in INTERNAL]
    return Selection(table, label, names)
