"""The population a sample is drawn from, and the strata of its images.

The population is the readable images (``status = 'ok'``: not vanished, not unreadable) that
match ``where`` (SQL over the ``images`` columns and, when flags exist, the ``flags`` columns),
minus, by default, the junk (``is_junk``) and the non-canonical near duplicates
(``is_near_duplicate``, ``is_semantic_duplicate``): one canonical image per duplicate group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from exokiratory.core.catalog import Catalog
from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.sample.columns import ImageColumns, qi

log = logging.getLogger(__name__)

#: images with their flags, the relation ``where`` clauses are written against
IMAGES_FLAGS_SQL = (
    "SELECT i.*, f.* EXCLUDE (image_id, image_idx, n_paths) "
    "FROM images i LEFT JOIN flags f USING (image_id)"
)
JUNK = "coalesce(is_junk, false)"
DUPLICATE = "(coalesce(is_near_duplicate, false) OR coalesce(is_semantic_duplicate, false))"


def filtered_images_sql(catalog: Catalog, where: str | None) -> str:
    """``images`` (with the ``flags`` columns when they exist) filtered by ``where``."""
    base = IMAGES_FLAGS_SQL if "flags" in catalog.views else "SELECT * FROM images"
    return f"SELECT * FROM ({base}) WHERE ({where})" if where else base


@dataclass
class Population:
    """The eligible images (``image_id``, ``image_idx``, ordered by ``image_idx``) and what the
    default rules left out."""

    table: pa.Table
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def image_idx(self) -> np.ndarray:
        return self.table.column("image_idx").to_numpy()


def load_population(
    catalog: Catalog, where: str | None, include_junk: bool, include_duplicates: bool
) -> Population:
    """The images a sample may take (see the module docstring)."""
    src = filtered_images_sql(catalog, where)
    notes: list[str] = []
    excluded: dict[str, int] = {}
    keep = ["status = 'ok'"]
    if "flags" in catalog.views:
        n_junk, n_dup = catalog.rows(
            f"SELECT count(*) FILTER (WHERE {JUNK}), "
            f"count(*) FILTER (WHERE {DUPLICATE} AND NOT {JUNK}) FROM ({src}) "
            "WHERE status = 'ok'"
        )[0]
        if not include_junk:
            keep.append(f"NOT {JUNK}")
            excluded["junk"] = int(n_junk)
        if not include_duplicates:
            keep.append(f"NOT {DUPLICATE}")
            excluded["near-duplicates"] = int(n_dup)
    elif not (include_junk and include_duplicates):
        notes.append(
            "no flags yet: junk and near duplicates are not excluded "
            "(run `exokiratory run flags` first)"
        )
    table = catalog.query(
        f"SELECT image_id, image_idx FROM ({src}) WHERE {' AND '.join(keep)} ORDER BY image_idx"
    )
    return Population(table, excluded, notes)


def cluster_levels(catalog: Catalog, space: str) -> list[int]:
    """Levels of ``clusters_<space>``, coarsest first (empty when not computed)."""
    view = f"clusters_{space}"
    if view not in catalog.views:
        return []
    return [int(r[0]) for r in catalog.rows(f"SELECT DISTINCT level FROM {view} ORDER BY 1 DESC")]


def cluster_paths(catalog: Catalog, space: str, pop: Population) -> np.ndarray:
    """Per population image: its cluster ids from the coarsest level to the finest
    (-1 where the image has no cluster: no embedding yet)."""
    levels = cluster_levels(catalog, space)
    if not levels:
        raise ValueError(
            f"balanced sampling needs the {space} cluster hierarchy (view clusters_{space}): run "
            f"`exokiratory run embed-{space} clusters-{space}`, or sample with --by COLUMN or "
            "--rule uniform"
        )
    picks = ", ".join(
        f"coalesce(max(c.cluster_id) FILTER (WHERE c.level = {lv}), -1) AS l{lv}" for lv in levels
    )
    catalog.con.register("_sample_pop", pop.table.select(["image_id", "image_idx"]))
    try:
        t = catalog.query(
            f"SELECT p.image_idx, {picks} FROM _sample_pop p "
            f"LEFT JOIN clusters_{space} c USING (image_id) GROUP BY p.image_idx "
            "ORDER BY p.image_idx"
        )
    finally:
        catalog.con.unregister("_sample_pop")
    return np.stack([t.column(f"l{lv}").to_numpy() for lv in levels], axis=1).astype(np.int64)


def column_strata(catalog: Catalog, column: str, pop: Population) -> list[str]:
    """Per population image: the value of a per-image column, as text ('null' when missing)."""
    (col,) = ImageColumns(catalog).resolve([column])
    catalog.con.register("_sample_pop", pop.table.select(["image_id", "image_idx"]))
    try:
        t = catalog.query(
            f"SELECT coalesce(CAST(c.{qi(col.name)} AS VARCHAR), 'null') AS v FROM _sample_pop p "
            f"LEFT JOIN ({col.select}) c USING (image_id) ORDER BY p.image_idx"
        )
    finally:
        catalog.con.unregister("_sample_pop")
    return [str(v) for v in t.column("v").to_pylist()]


def random_weight_note(catalog: Catalog, space: str) -> str | None:
    """A warning when the space's embeddings come from a random-weight (tiny) model."""
    view = f"embeddings_{space}"
    if view not in catalog.views:
        return None
    n = catalog.scalar(f"SELECT count(*) FROM {view} WHERE model_id LIKE '{TINY_PREFIX}%'")
    if not n:
        return None
    return (
        f"the {space} clusters come from RANDOM-WEIGHT (tiny) embeddings: the balance is "
        "plumbing, not meaning"
    )
