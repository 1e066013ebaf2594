"""Per-image columns from any catalog view: what ``sample --by`` and ``export --columns`` accept.

A column is available when a view holds at most one row per image (``images``, ``flags``,
``features``, ``embeddings_clip``, ``cues``...). Names are looked up in ``images``, then
``flags``, then ``features``, then the other views by name; ``view.column`` picks a view
explicitly (the output column is then ``view_column``). Cluster hierarchies add one column per
level: ``cluster_<space>_l<level>`` (the image's cluster id at that level of ``clusters_<space>``).
An unknown name is an error that lists the available ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from exokiratory.core.catalog import Catalog

#: views never searched: other views' duplicates, logs, and the samples themselves
SKIPPED_VIEWS = frozenset(
    {"images_registry", "images_routed", "image_paths", "paths", "paths_log", "jobs"}
)
PRIORITY = ("images", "flags", "features")
_CLUSTER_VIEW = re.compile(r"^clusters_([a-z0-9]+)$")


def qi(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class ImageColumn:
    """An output column ``name``: ``select`` is a query giving ``image_id`` and ``name``."""

    name: str
    view: str
    select: str


class UnknownColumnError(ValueError):
    """A requested column that no per-image view holds (the message lists those available)."""


class ImageColumns:
    """The per-image columns of a catalog (views inspected once, on first use)."""

    def __init__(self, catalog: Catalog):
        self.cat = catalog
        self._available: dict[str, ImageColumn] | None = None

    def _columns_of(self, view: str) -> list[str]:
        return self.cat.query(f"SELECT * FROM {qi(view)} LIMIT 0").column_names

    def _is_per_image(self, view: str, columns: Sequence[str]) -> bool:
        if "image_id" not in columns or "segment_id" in columns:
            return False
        if view in PRIORITY:
            return True
        n, distinct = self.cat.rows(f"SELECT count(*), count(DISTINCT image_id) FROM {qi(view)}")[0]
        return bool(n == distinct)

    def _ordered_views(self) -> list[str]:
        views = [
            v for v in self.cat.views if v not in SKIPPED_VIEWS and not v.startswith("samples")
        ]
        first = [v for v in PRIORITY if v in views]
        return first + sorted(v for v in views if v not in first)

    def available(self) -> dict[str, ImageColumn]:
        """Every available column by name (plain names first, then ``view.column`` ones)."""
        if self._available is not None:
            return self._available
        plain: dict[str, ImageColumn] = {}
        qualified: dict[str, ImageColumn] = {}
        for view in self._ordered_views():
            cols = self._columns_of(view)
            m = _CLUSTER_VIEW.match(view)
            if m and {"level", "cluster_id"} <= set(cols):
                plain.update(self._cluster_columns(view, m.group(1)))
                continue
            if not self._is_per_image(view, cols):
                continue
            for c in cols:
                if c == "image_id":
                    continue
                out = f"{view}_{c}"
                sel = f"SELECT image_id, {qi(c)} AS {qi(out)} FROM {qi(view)}"
                qualified[f"{view}.{c}"] = ImageColumn(out, view, sel)
                if c not in plain:
                    sel = f"SELECT image_id, {qi(c)} FROM {qi(view)}"
                    plain[c] = ImageColumn(c, view, sel)
        self._available = {**plain, **qualified}
        return self._available

    def _cluster_columns(self, view: str, space: str) -> dict[str, ImageColumn]:
        levels = [r[0] for r in self.cat.rows(f"SELECT DISTINCT level FROM {qi(view)} ORDER BY 1")]
        out = {}
        for lv in levels:
            name = f"cluster_{space}_l{lv}"
            sel = (
                f"SELECT image_id, cluster_id AS {qi(name)} FROM {qi(view)} WHERE level = {int(lv)}"
            )
            out[name] = ImageColumn(name, view, sel)
        return out

    def resolve(self, names: Sequence[str]) -> list[ImageColumn]:
        """The columns asked for, in order; an unknown one raises :class:`UnknownColumnError`."""
        avail = self.available()
        unknown = [n for n in names if n not in avail]
        if unknown:
            plain = [n for n in avail if "." not in n]
            raise UnknownColumnError(
                f"unknown column(s) {', '.join(unknown)}; available: {', '.join(plain)} "
                "(or view.column for a column of a given view)"
            )
        return [avail[n] for n in dict.fromkeys(names)]


def with_columns_sql(base: str, columns: Sequence[ImageColumn], order_by: str) -> str:
    """``base`` (a query with an ``image_id`` column) with the given columns joined on, ordered
    by the base's column ``order_by``."""
    joins = "".join(
        f" LEFT JOIN ({c.select}) AS _c{i} USING (image_id)" for i, c in enumerate(columns)
    )
    picks = "".join(f", _c{i}.{qi(c.name)}" for i, c in enumerate(columns))
    return f"SELECT _b.*{picks} FROM ({base}) AS _b{joins} ORDER BY _b.{qi(order_by)}"
