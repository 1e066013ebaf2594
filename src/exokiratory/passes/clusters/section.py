"""The clusters family on the report: cluster exemplar sheets and the embedding outliers.

* section ``clusters``: per embedding space, the images closest to the centroid of each of the
  largest clusters of the coarsest level (``clusters_<space>_summary.exemplar_ids`` when present,
  else ranked from ``clusters_<space>``);
* block ``outliers`` of the galleries: the images least similar to their own cluster centroid at
  the finest level.

:func:`cluster_levels` is shared with the maps (colour fields) and the stop panel.
"""

from __future__ import annotations

from typing import Any

from exokiratory.core.tables import Tables
from exokiratory.engine.sections import (
    Gallery,
    SectionContext,
    grouped_tiles,
    plural,
    register_section,
    tiles,
)

SPACES = ("clip", "dino")


def cluster_levels(tables: Tables, space: str) -> list[tuple[int, int]]:
    """(level, k) of the clusterings of a space, coarsest first (queried once per build)."""
    return tables.memo(f"cluster_levels:{space}", lambda: _cluster_levels(tables, space))


def _cluster_levels(tables: Tables, space: str) -> list[tuple[int, int]]:
    view = f"clusters_{space}"
    if not tables.has(view, "image_id", "cluster_id") or not tables.nonempty(view):
        return []
    if not tables.has(view, "level"):
        k = int(tables.cat.scalar(f"SELECT count(DISTINCT cluster_id) FROM {view}") or 0)
        return [(0, k)]
    kcol = "k" if tables.has(view, "k") else "count(DISTINCT cluster_id)"
    agg = "max(k)" if kcol == "k" else kcol
    return [
        (int(level), int(k))
        for level, k in tables.cat.rows(f"SELECT level, {agg} FROM {view} GROUP BY 1 ORDER BY 2")
    ]


# -- outliers -----------------------------------------------------------------------------------
def outlier_galleries(tables: Tables, n: int) -> list[Gallery]:
    out = []
    for space in SPACES:
        view = f"clusters_{space}"
        levels = cluster_levels(tables, space)
        if not levels or not tables.has(view, "similarity"):
            continue
        level = levels[-1][0]
        where = f"WHERE c.level = {level}" if tables.has(view, "level") else ""
        rows = tables.cat.query(
            f"""SELECT c.image_id, c.cluster_id, c.similarity, i.first_path
                FROM {view} c JOIN images i USING (image_id) {where}
                ORDER BY c.similarity ASC NULLS LAST, c.image_id LIMIT {int(n)}"""
        ).to_pylist()
        out.append(
            Gallery(
                f"outliers-{space}",
                f"{space.upper()} outliers",
                f"lowest cosine similarity to their own cluster centroid (finest level, "
                f"k={levels[-1][1]})",
                tiles(rows, "sim {similarity} · c{cluster_id}"),
            )
        )
    return out


@register_section(
    "outliers",
    title="Embedding outliers",
    order=20,
    parent="galleries",
    template="galleries.html.j2",
    needs=("clusters_*",),
)
def gather_outliers(ctx: SectionContext) -> list[Gallery] | None:
    return ctx.show(*outlier_galleries(ctx.tables, ctx.params.gallery_size)) or None


# -- exemplars ----------------------------------------------------------------------------------
def _exemplar_rows(tables: Tables, space: str, level: int, n: int, per: int) -> list[Any]:
    view = f"clusters_{space}"
    summary = f"{view}_summary"
    if tables.has(summary, "cluster_id", "size", "exemplar_ids"):
        slvl = f"WHERE level = {level}" if tables.has(summary, "level") else ""
        return tables.cat.query(
            f"""WITH s AS (SELECT cluster_id, size, exemplar_ids FROM {summary} {slvl}
                           ORDER BY size DESC, cluster_id LIMIT {int(n)}),
                     e AS (SELECT cluster_id, size, unnest(exemplar_ids[1:{int(per)}])
                           AS image_id, generate_subscripts(exemplar_ids[1:{int(per)}], 1)
                           AS rank FROM s)
                SELECT e.*, i.first_path FROM e JOIN images i USING (image_id)
                ORDER BY size DESC, cluster_id, rank"""
        ).to_pylist()
    lvl = f"AND c.level = {level}" if tables.has(view, "level") else ""
    order = "c.is_exemplar DESC, " if tables.has(view, "is_exemplar") else ""
    sim = "c.similarity DESC NULLS LAST, " if tables.has(view, "similarity") else ""
    return tables.cat.query(
        f"""WITH s AS (SELECT cluster_id, count(*) AS size FROM {view} c
                       WHERE true {lvl} GROUP BY 1 ORDER BY size DESC, cluster_id
                       LIMIT {int(n)})
            SELECT c.image_id, c.cluster_id, s.size, i.first_path
            FROM {view} c JOIN s USING (cluster_id) JOIN images i USING (image_id)
            WHERE true {lvl}
            QUALIFY row_number() OVER (PARTITION BY c.cluster_id
                    ORDER BY {order}{sim}c.image_id) <= {int(per)}
            ORDER BY s.size DESC, c.cluster_id"""
    ).to_pylist()


def exemplar_galleries(tables: Tables, n_clusters: int, per: int) -> list[Gallery]:
    out = []
    for space in SPACES:
        levels = cluster_levels(tables, space)
        if not levels:
            continue
        level, k = levels[0]
        rows = _exemplar_rows(tables, space, level, n_clusters, per)
        gal = Gallery(
            f"exemplars-{space}",
            f"{space.upper()} cluster exemplars",
            f"level {level} (k={k}): the {n_clusters} largest clusters, images closest to "
            "the centroid first",
        )
        gal.groups = grouped_tiles(
            rows, lambda r: f"cluster {r['cluster_id']} ({plural(int(r['size']))})"
        )
        out.append(gal)
    return out


@register_section(
    "clusters", title="Clusters", order=60, template="galleries.html.j2", needs=("clusters_*",)
)
def gather_clusters(ctx: SectionContext) -> list[Gallery] | None:
    p = ctx.params
    galleries = exemplar_galleries(ctx.tables, p.exemplar_clusters, p.exemplars_per_cluster)
    return ctx.show(*galleries) or None
