"""The motifs family on the report: motif sheets (section ``segments``).

One sheet per embedding space: exemplar segments of the largest motifs (segment clusters),
cropped from their images (``motifs_clusters.exemplar_segment_ids`` when present, else ranked
from the ``motifs`` members). Without motifs the section says how many segments exist and what
to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables, qi
from exokiratory.engine.sections import (
    Gallery,
    SectionContext,
    Tile,
    grouped_tiles,
    plural,
    register_section,
)


def _summary_rows(tables: Tables, summary: str, where: str, n: int, per: int) -> list[Any]:
    return tables.cat.query(
        f"""WITH s AS (SELECT cluster_id, size, exemplar_segment_ids AS ex
                       FROM {qi(summary)} WHERE true {where}
                       ORDER BY size DESC, cluster_id LIMIT {int(n)}),
                 e AS (SELECT cluster_id, size, unnest(ex[1:{int(per)}]) AS segment_id,
                              generate_subscripts(ex[1:{int(per)}], 1) AS rank FROM s)
            SELECT e.cluster_id, e.size, e.segment_id, g.image_id, g.bbox,
                   g.mask_width, g.mask_height, i.first_path
            FROM e JOIN segments g USING (segment_id) JOIN images i USING (image_id)
            ORDER BY e.size DESC, e.cluster_id, e.rank"""
    ).to_pylist()


def _member_rows(tables: Tables, member: str, where: str, n: int, per: int) -> list[Any]:
    rank = ["m.is_exemplar DESC"] if tables.has(member, "is_exemplar") else []
    if tables.has(member, "similarity"):
        rank.append("m.similarity DESC NULLS LAST")
    order = ", ".join([*rank, "m.segment_id"])
    return tables.cat.query(
        f"""WITH s AS (SELECT cluster_id, count(*) AS size FROM {qi(member)}
                       WHERE true {where} GROUP BY 1 ORDER BY size DESC, cluster_id
                       LIMIT {int(n)})
            SELECT m.cluster_id, s.size, m.segment_id, g.image_id, g.bbox,
                   g.mask_width, g.mask_height, i.first_path
            FROM {qi(member)} m JOIN s USING (cluster_id)
            JOIN segments g USING (segment_id) JOIN images i ON i.image_id = g.image_id
            WHERE true {where.replace("space", "m.space")}
            QUALIFY row_number() OVER (PARTITION BY m.cluster_id ORDER BY {order})
                    <= {int(per)}
            ORDER BY s.size DESC, m.cluster_id"""
    ).to_pylist()


def _crop_tile(r: Any) -> Tile:
    """A segment's tile: its bounding box, in fractions of the image."""
    x, y, w, h = (float(c) for c in r["bbox"])
    mw, mh = float(r["mask_width"] or 1), float(r["mask_height"] or 1)
    crop = [x / mw, y / mh, (x + w) / mw, (y + h) / mh]
    return Tile(r["segment_id"], "", str(r["first_path"] or ""), r["image_id"], crop)


def motif_galleries(tables: Tables, n_motifs: int, per: int) -> list[Gallery]:
    """Motif sheets, one per embedding space."""
    if not tables.has("segments", "segment_id", "image_id", "bbox", "mask_width", "mask_height"):
        return []
    summary = tables.find_with(
        "cluster_id", "size", "exemplar_segment_ids", prefer=("motifs_clusters",)
    )
    member = tables.find_with("segment_id", "cluster_id", prefer=("motifs",))
    src = summary or member
    if src is None:
        return []
    spaces: list[str | None] = [None]
    if tables.has(src, "space"):
        spaces = [
            str(r[0]) for r in tables.cat.rows(f"SELECT DISTINCT space FROM {qi(src)} ORDER BY 1")
        ]
    out = []
    for space in spaces:
        where = "" if space is None else f"AND space = '{space.replace(chr(39), '')}'"
        if summary is not None:
            rows = _summary_rows(tables, summary, where, n_motifs, per)
        else:
            rows = _member_rows(tables, src, where, n_motifs, per)
        gal = Gallery(
            f"motifs-{space or 'all'}",
            f"{(space or '').upper()} motif sheets".strip(),
            f"the {n_motifs} largest motifs (segment clusters), exemplar segments cropped "
            "from their images",
        )
        gal.groups = grouped_tiles(
            rows,
            lambda r: f"motif {r['cluster_id']} ({plural(int(r['size']), 'segment')})",
            _crop_tile,
        )
        out.append(gal)
    return out


@dataclass
class Motifs:
    galleries: list[Gallery] = field(default_factory=list)
    n_segments: int = 0  # segments that exist while no motif does


@register_section(
    "segments",
    title="Segments and motifs",
    nav="segments",
    order=70,
    template="motifs.html.j2",
    needs=("segment*", "motifs*"),
)
def gather_motifs(ctx: SectionContext) -> Motifs | None:
    p = ctx.params
    galleries = motif_galleries(ctx.tables, p.exemplar_clusters, p.exemplars_per_cluster)
    if galleries:
        return Motifs(ctx.show(*galleries))
    segments = ctx.tables.get("segments")
    if segments is not None and segments.rows:
        return Motifs(n_segments=segments.rows)
    return None
