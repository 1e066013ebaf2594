"""The synthesis family on the report (section ``synthesis``, between the captions and the
samples): the motif co-occurrence graph of each space (an SVG drawn here: motifs on a circle,
grouped by community; edges: the significant positive associations), the comparisons with
their shuffled-label baselines, contingency heat maps, and the distinctive caption terms per
cluster. Random-weight inputs are marked by the page (the models behind the section's
``needs``, through the steps' reads) and per comparison (the agreement table's "random
weights" column, from ``structure_agreement.random_weight_models``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables
from exokiratory.engine.sections import SectionContext, register_section

#: the views this section shows
VIEWS = (
    "motif_bags",
    "motif_cooccurrence",
    "motif_communities",
    "structure_agreement",
    "structure_contingency",
    "caption_terms",
)
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
GRAPH_NODES = 60  # motifs drawn per graph (the most frequent)
HEATMAP_CLUSTERS = 15  # rows and columns of a heat map (the largest clusters)
SIZE = 360  # px, the graph's square


@dataclass
class GraphPicture:
    space: str
    n_motifs: int
    n_edges: int
    n_significant: int
    method: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    size: int = SIZE


@dataclass
class Heatmap:
    comparison_id: str
    title: str
    cols: list[int]
    rows: list[tuple[int, int, list[tuple[float, int]]]]  # left cluster, size, (fraction, n)


@dataclass
class Synthesis:
    graphs: list[GraphPicture] = field(default_factory=list)
    agreement: list[dict[str, Any]] = field(default_factory=list)
    heatmaps: list[Heatmap] = field(default_factory=list)
    terms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_bags: int = 0


def graph_picture(t: Tables, space: str) -> GraphPicture | None:
    """The largest motifs of ``space`` on a circle, grouped by community."""
    nodes = t.cat.query(
        "SELECT motif_id, community_id, n_images, is_infrastructure, method FROM motif_communities "
        f"WHERE space = ? ORDER BY n_images DESC, motif_id LIMIT {GRAPH_NODES}",
        [space],
    ).to_pylist()
    if not nodes:
        return None
    nodes.sort(key=lambda r: (r["community_id"], r["motif_id"]))
    stats = t.cat.rows(
        "SELECT count(*), count(*) FILTER (WHERE is_significant) FROM motif_cooccurrence "
        "WHERE space = ?",
        [space],
    )[0]
    n_nodes = int(t.cat.scalar("SELECT count(*) FROM motif_communities WHERE space = ?", [space]))
    pic = GraphPicture(space, n_nodes, int(stats[0]), int(stats[1]), str(nodes[0]["method"]))
    top = max(int(r["n_images"]) for r in nodes) or 1
    c, radius = SIZE / 2, SIZE / 2 - 28
    where = {}
    for i, r in enumerate(nodes):
        angle = 2 * math.pi * i / len(nodes) - math.pi / 2
        x, y = c + radius * math.cos(angle), c + radius * math.sin(angle)
        where[r["motif_id"]] = (x, y)
        pic.nodes.append(
            {
                "x": round(x, 1),
                "y": round(y, 1),
                "r": round(3 + 9 * math.sqrt(int(r["n_images"]) / top), 1),
                "color": PALETTE[int(r["community_id"]) % len(PALETTE)],
                "label": str(r["motif_id"]),
                "title": f"motif {r['motif_id']}: community {r['community_id']}, "
                f"{r['n_images']} images" + (", infrastructure" if r["is_infrastructure"] else ""),
            }
        )
    edges = t.cat.query(
        "SELECT motif_a, motif_b, npmi, count, z_score FROM motif_cooccurrence "
        "WHERE space = ? AND is_significant AND npmi > 0 ORDER BY z_score DESC LIMIT 400",
        [space],
    ).to_pylist()
    for e in edges:
        if e["motif_a"] in where and e["motif_b"] in where:
            (x1, y1), (x2, y2) = where[e["motif_a"]], where[e["motif_b"]]
            pic.edges.append(
                {
                    "x1": round(x1, 1),
                    "y1": round(y1, 1),
                    "x2": round(x2, 1),
                    "y2": round(y2, 1),
                    "w": round(0.5 + 3 * float(e["npmi"]), 2),
                    "title": f"motifs {e['motif_a']}-{e['motif_b']}: {e['count']} images, "
                    f"npmi {e['npmi']:.2f}, z {e['z_score']:.1f}",
                }
            )
    return pic


def agreement_rows(t: Tables) -> list[dict[str, Any]]:
    rows = t.cat.query(
        "SELECT kind, left_clustering, left_level, right_clustering, n, k_left, k_right, ari, ari_baseline, "
        "ari_baseline_std, ami, ami_baseline, n_split, n_merged, is_above_baseline, "
        "random_weight_models FROM structure_agreement ORDER BY kind, left_level, left_clustering, right_clustering"
    ).to_pylist()
    out = []
    for r in rows:
        left = r["left_clustering"] + (f"@{r['left_level']}" if r["left_level"] is not None else "")
        out.append(
            {
                "kind": r["kind"],
                "left": left,
                "right": r["right_clustering"],
                "n": r["n"],
                "k": f"{r['k_left']} / {r['k_right']}",
                "ARI": _pm(r["ari"]),
                "ARI baseline": _pm(r["ari_baseline"], r["ari_baseline_std"]),
                "AMI": _pm(r["ami"]),
                "AMI baseline": _pm(r["ami_baseline"]),
                "split / merged": f"{r['n_split']} / {r['n_merged']}",
                "above chance": "yes" if r["is_above_baseline"] else "no",
                "random weights": r["random_weight_models"] or "",
            }
        )
    return out


def _pm(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def heatmaps(t: Tables) -> list[Heatmap]:
    """One heat map per kind of comparison: the one with the fewest clusters (coarsest)."""
    picks = t.cat.query(
        "SELECT comparison_id, kind, left_clustering, left_level, right_clustering "
        "FROM structure_agreement "
        "QUALIFY row_number() OVER (PARTITION BY kind ORDER BY k_left * k_right, comparison_id) "
        "= 1 ORDER BY kind"
    ).to_pylist()
    out = []
    for p in picks:
        cells = t.cat.query(
            "SELECT left_cluster, right_cluster, n, left_size, left_fraction "
            "FROM structure_contingency WHERE comparison_id = ?",
            [p["comparison_id"]],
        ).to_pylist()
        if not cells:
            continue
        lefts = _largest({c["left_cluster"]: c["left_size"] for c in cells})
        rights = _largest(_sum_by(cells, "right_cluster"))
        grid = {(c["left_cluster"], c["right_cluster"]): c for c in cells}
        size = {c["left_cluster"]: c["left_size"] for c in cells}
        rows = []
        for lc in lefts:
            row = []
            for rc in rights:
                cell = grid.get((lc, rc))
                row.append((float(cell["left_fraction"]), int(cell["n"])) if cell else (0.0, 0))
            rows.append((lc, int(size[lc]), row))
        level = f"@{p['left_level']}" if p["left_level"] is not None else ""
        title = (
            f"{p['kind']}: {p['left_clustering']}{level} (rows) vs {p['right_clustering']} "
            "(columns)"
        )
        out.append(Heatmap(p["comparison_id"], title, rights, rows))
    return out


def _sum_by(cells: list[dict[str, Any]], key: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in cells:
        out[c[key]] = out.get(c[key], 0) + int(c["n"])
    return out


def _largest(sizes: dict[int, int]) -> list[int]:
    top = sorted(sizes, key=lambda k: (-sizes[k], k))[:HEATMAP_CLUSTERS]
    return sorted(top)


def term_rows(t: Tables) -> list[dict[str, Any]]:
    """Per cluster of the coarsest image-cluster level (and the caption clusters): its terms."""
    rows = t.cat.query(
        """WITH pick AS (SELECT clustering, max(level) AS level FROM caption_terms GROUP BY 1)
           SELECT c.clustering, c.level, c.cluster_id, any_value(c.n_images) AS n_images,
                  any_value(c.n_captions) AS n_captions,
                  any_value(c.mean_clip_score) AS mean_clip_score,
                  string_agg(c.term, ', ' ORDER BY c.rank) AS terms
           FROM caption_terms c JOIN pick p ON p.clustering = c.clustering
                AND (p.level IS NULL OR c.level = p.level)
           GROUP BY ALL ORDER BY c.clustering, n_images DESC, c.cluster_id LIMIT 60"""
    ).to_pylist()
    return [
        {
            "clustering": r["clustering"] + (f"@{r['level']}" if r["level"] is not None else ""),
            "cluster": r["cluster_id"],
            "images": r["n_images"],
            "captions": r["n_captions"],
            "mean clip_score": "-"
            if r["mean_clip_score"] is None
            else f"{r['mean_clip_score']:.3f}",
            "distinctive terms": r["terms"],
        }
        for r in rows
    ]


def skipped_notes(t: Tables) -> list[str]:
    out = []
    for view in ("motif_bags_notes", "caption_clusters_notes", "structure_agreement_notes"):
        if t.nonempty(view):
            rows = t.cat.rows(
                f"SELECT part, detail FROM \"{view}\" WHERE status = 'skipped' ORDER BY part"
            )
            out += [f"{part}: {detail}" for part, detail in rows]
    return out


@register_section(
    "synthesis",
    title="Synthesis: motifs, images and language compared",
    nav="synthesis",
    order=78,
    template="synthesis.html.j2",
    needs=VIEWS,
)
def gather_synthesis(ctx: SectionContext) -> Synthesis | None:
    t = ctx.tables
    if not any(t.nonempty(v) for v in VIEWS):
        return None
    data = Synthesis(n_bags=int(t.cat.scalar("SELECT count(*) FROM motif_bags") or 0))
    if t.nonempty("motif_communities"):
        spaces = [
            r[0] for r in t.cat.rows("SELECT DISTINCT space FROM motif_communities ORDER BY 1")
        ]
        data.graphs = [g for s in spaces if (g := graph_picture(t, s)) is not None]
    if t.nonempty("structure_agreement"):
        data.agreement = agreement_rows(t)
        data.heatmaps = heatmaps(t)
    if t.nonempty("caption_terms"):
        data.terms = term_rows(t)
    data.notes = skipped_notes(t)
    return data
