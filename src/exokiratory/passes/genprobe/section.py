"""The generative-probing family on the report (section ``genprobe``).

* counts: generations, errors, and the RANDOM-WEIGHT note when tiny pipelines made them;
* the stability curves: per space and conditioning, the mean ``stability_score`` of the
  exemplars at each strength (the fraction of generations whose nearest real cluster is the
  exemplar's own), drawn as inline SVG;
* strips: for the first exemplars, the exemplar then its generations at each strength (first
  seed), one strip per conditioning;
* the hole gallery: the generations with the highest ``hole_score``;
* fragile motifs (the most fragile rows) and the reconstruction outlier scores beside PASS 2's
  embedding outlier scores (with their Spearman rank correlation).

Generated images live as bytes in ``genprobe_outputs``: they are shown as small inline images
(data URIs, at most :data:`THUMB_SIDE` px), never written as files.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables
from exokiratory.engine.sections import (
    Gallery,
    SectionContext,
    Tile,
    plural,
    register_section,
    short,
)
from exokiratory.passes.genprobe.measures import rank_correlation

THUMB_SIDE = 128
STRIP_EXEMPLARS = 6
CHART_W, CHART_H = 320, 160


def thumb_uri(data: bytes | None) -> str:
    """A small PNG data URI of a stored generation ("" when it cannot be read)."""
    if not data:
        return ""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            img = im.convert("RGB")
    except Exception:
        return ""
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class GenTile:
    uri: str
    caption: str
    title: str = ""


@dataclass
class Strip:
    exemplar: Tile
    conditioning: str
    tiles: list[GenTile]


@dataclass
class Curve:
    label: str
    points: list[tuple[float, float]]
    path: str = ""


@dataclass
class GenProbe:
    note: str
    random_weight: bool
    curves: list[Curve] = field(default_factory=list)
    strips: list[Strip] = field(default_factory=list)
    holes: list[GenTile] = field(default_factory=list)
    fragile: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    correlations: list[dict[str, Any]] = field(default_factory=list)
    chart: dict[str, int] = field(default_factory=lambda: {"w": CHART_W, "h": CHART_H})


def curves(tables: Tables) -> list[Curve]:
    """Mean stability score per strength, per space and conditioning."""
    if not tables.nonempty("genprobe_stability"):
        return []
    rows = tables.cat.query(
        """SELECT space, conditioning, strength, avg(stability_score) AS s
           FROM genprobe_stability WHERE stability_score IS NOT NULL
           GROUP BY ALL ORDER BY space, conditioning, strength"""
    ).to_pylist()
    out: dict[str, Curve] = {}
    for r in rows:
        label = f"{r['space']} / {r['conditioning']}"
        out.setdefault(label, Curve(label, [])).points.append((float(r["strength"]), float(r["s"])))
    for c in out.values():
        c.path = " ".join(
            f"{'M' if i == 0 else 'L'}{x * CHART_W:.1f},{(1 - y) * CHART_H:.1f}"
            for i, (x, y) in enumerate(c.points)
        )
    return list(out.values())


def strips(tables: Tables, n: int) -> tuple[list[Strip], Gallery]:
    """Exemplar -> generations (first seed) per strength, per conditioning."""
    rows = tables.cat.query(
        f"""WITH ex AS (SELECT image_id, min(image_idx) AS idx FROM genprobe_outputs
                        GROUP BY 1 ORDER BY idx LIMIT {int(n)}),
                 s AS (SELECT min(seed) AS seed FROM genprobe_outputs)
            SELECT g.image_id, g.conditioning, g.strength, g.image, g.error, i.first_path
            FROM genprobe_outputs g JOIN ex USING (image_id) JOIN images i USING (image_id)
            WHERE g.seed = (SELECT seed FROM s)
            ORDER BY ex.idx, g.conditioning, g.strength"""
    ).to_pylist()
    out: dict[tuple[str, str], Strip] = {}
    for r in rows:
        key = (r["image_id"], r["conditioning"])
        if key not in out:
            tile = Tile(r["image_id"], "exemplar", str(r["first_path"] or ""), r["image_id"])
            out[key] = Strip(tile, r["conditioning"], [])
        cap = f"strength {short(r['strength'])}"
        out[key].tiles.append(GenTile(thumb_uri(r["image"]), cap, r["error"] or ""))
    exemplars = {s.exemplar.thumb_id: s.exemplar for s in out.values()}
    return list(out.values()), Gallery("genprobe-exemplars", "", tiles=list(exemplars.values()))


def hole_tiles(tables: Tables, n: int) -> list[GenTile]:
    if not tables.nonempty("genprobe_holes"):
        return []
    rows = tables.cat.query(
        f"""SELECT h.space, h.conditioning, h.strength, h.hole_score, h.is_hole, g.image
            FROM genprobe_holes h JOIN genprobe_outputs g USING (gen_id)
            WHERE h.hole_score IS NOT NULL
            ORDER BY h.hole_score DESC, h.gen_id, h.space LIMIT {int(n)}"""
    ).to_pylist()
    return [
        GenTile(
            thumb_uri(r["image"]),
            f"{r['space']} hole {short(r['hole_score'])}{' (hole)' if r['is_hole'] else ''}",
            f"{r['conditioning']}, strength {short(r['strength'])}",
        )
        for r in rows
    ]


def fragile_rows(tables: Tables, n: int) -> list[dict[str, Any]]:
    if not tables.nonempty("genprobe_fragile"):
        return []
    return tables.cat.query(
        f"""SELECT left(image_id, 12) AS exemplar, space, conditioning, strength,
                   motif_cluster_id AS motif, presence_exemplar, presence_generated,
                   fragility_score, stay_fraction, is_fragile
            FROM genprobe_fragile WHERE fragility_score IS NOT NULL
            ORDER BY is_fragile DESC, fragility_score DESC, image_id, motif_cluster_id
            LIMIT {int(n)}"""
    ).to_pylist()


def outlier_rows(tables: Tables, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The highest reconstruction outlier scores, and per space and conditioning the Spearman
    correlation with PASS 2's embedding outlier score over the exemplars."""
    if not tables.nonempty("genprobe_exemplars"):
        return [], []
    rows = tables.cat.query(
        """SELECT image_id, space, conditioning, reconstruction_distance,
                  reconstruction_outlier_score, embedding_outlier_score, knn_distance
           FROM genprobe_exemplars WHERE reconstruction_distance IS NOT NULL
           ORDER BY space, conditioning, image_id"""
    ).to_pylist()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["space"], r["conditioning"]), []).append(r)
    corr = [
        {
            "space": s,
            "conditioning": c,
            "exemplars": len(g),
            "spearman_vs_embedding_outlier": rank_correlation(
                [r["reconstruction_outlier_score"] for r in g],
                [r["embedding_outlier_score"] for r in g],
            ),
            "spearman_vs_knn_distance": rank_correlation(
                [r["reconstruction_distance"] for r in g], [r["knn_distance"] for r in g]
            ),
        }
        for (s, c), g in groups.items()
    ]
    top = sorted(rows, key=lambda r: -(r["reconstruction_outlier_score"] or 0.0))[:n]
    for r in top:
        r["image_id"] = r["image_id"][:12]
    return top, corr


@register_section(
    "genprobe",
    title="Generative probing",
    nav="genprobe",
    order=79,
    template="genprobe.html.j2",
    needs=("genprobe_*",),
)
def gather_genprobe(ctx: SectionContext) -> GenProbe | None:
    t = ctx.tables
    if not t.nonempty("genprobe_outputs"):
        return None
    n = int(t.cat.scalar("SELECT count(*) FROM genprobe_outputs") or 0)
    n_err = int(t.cat.scalar("SELECT count(*) FROM genprobe_outputs WHERE error IS NOT NULL") or 0)
    random = int(t.cat.scalar("SELECT count(*) FROM genprobe_outputs WHERE is_random_weights") or 0)
    note = f"{plural(n, 'generation')} ({n_err:,} with errors)"
    if random:
        from exokiratory.passes.genprobe.step import random_weight_note

        note += "; " + random_weight_note(random)
    p = ctx.params
    strip_list, exemplars = strips(t, STRIP_EXEMPLARS)
    ctx.show(exemplars)
    outliers, corr = outlier_rows(t, p.gallery_size)
    return GenProbe(
        note,
        bool(random),
        curves(t),
        strip_list,
        hole_tiles(t, p.gallery_size),
        fragile_rows(t, p.gallery_size),
        outliers,
        corr,
    )
