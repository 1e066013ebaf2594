"""The ``motif-bags`` derivation's computation: bags, frequencies, co-occurrence graph.

Reads the ``motifs`` and ``motifs_clusters`` views (and ``segments`` for the area weights, the
image clusters for the per-cluster frequencies, ``depth`` / ``depth_segments`` / ``ocr`` /
``detect`` for per-image aggregates when those ran) and returns the tables of
:mod:`exokiratory.passes.synthesis.schemas`. Definitions: :mod:`.bags` (bags and their clusters),
:mod:`.cooccur` (edges), :mod:`.communities` (nodes, GraphML). Minimum sizes (parameters):

* ``motif_frequency``: groups (image clusters) of at least ``min_group_images`` images;
* ``motif_cooccurrence`` / ``motif_communities``: motifs held by at least ``min_motif_images``
  images, pairs seen together in at least ``min_pair_images`` images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.step import PassParams, Spaces
from exokiratory.passes.synthesis.bags import Bags, SegmentMotifs, bag_clusters, motif_bags, shares
from exokiratory.passes.synthesis.base import Notes, has_column, has_rows
from exokiratory.passes.synthesis.communities import Communities, find_communities, graphml
from exokiratory.passes.synthesis.cooccur import Cooccurrence, Incidence, cooccurrence
from exokiratory.passes.synthesis.schemas import (
    MOTIF_BAGS_SCHEMA,
    MOTIF_COMMUNITIES_SCHEMA,
    MOTIF_COOCCURRENCE_SCHEMA,
    MOTIF_FREQUENCY_SCHEMA,
)

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

IMAGE_CLUSTER_VIEWS = ("clusters_clip", "clusters_dino")


class MotifBagsParams(PassParams):
    spaces: Spaces = Field(("clip", "dino"), description="motif spaces (those present)")
    min_group_images: int = Field(10, ge=1, description="motif_frequency: smallest image cluster")
    min_motif_images: int = Field(
        5, ge=1, description="graph: motifs held by fewer images left out"
    )
    min_pair_images: int = Field(
        3, ge=1, description="graph: pairs seen together in fewer left out"
    )
    n_shuffles: int = Field(20, ge=0, le=1000, description="shuffles of the co-occurrence baseline")
    significance_z: float = Field(
        3.0, gt=0, description="edge is_significant: z_score at least this"
    )
    community_method: Literal["auto", "leiden", "greedy_modularity", "components"] = "auto"
    resolution: float = Field(1.0, gt=0, description="Leiden / modularity resolution")
    bag_cluster_size: int = Field(30, ge=2, description="images per motif-bag cluster, on average")
    svd_dims: int = Field(64, ge=2, le=1024, description="TF-IDF dimensions kept before k-means")
    niter: int = Field(25, ge=1, le=1000)
    seed: int = 0


@dataclass(frozen=True)
class SpaceMotifs:
    """One space's segments, images and motif flags."""

    space: str
    image_ids: list[str]
    image_idx: np.ndarray  # sorted, unique
    seg: SegmentMotifs
    is_infrastructure: np.ndarray  # per motif
    is_rare: np.ndarray
    is_foreground: np.ndarray


SEGMENTS_SQL = """
SELECT m.image_id, m.image_idx, m.cluster_id, {area} AS area_fraction
FROM motifs m {join}
WHERE m.space = ? AND m.cluster_id IS NOT NULL
ORDER BY m.image_idx, m.segment_id
"""


def load_space(cat: Catalog, space: str, notes: Notes) -> SpaceMotifs | None:
    """The motifs of ``space`` or None (noted) when there are none."""
    if not has_rows(cat, "motifs", f"WHERE space = '{space}'"):
        notes.skip(
            f"bags:{space}",
            f"no {space} motifs: run segment-embed-{space} then motifs first "
            "(exokiratory run motifs)",
        )
        return None
    with_area = has_column(cat, "segments", "area_fraction") and has_rows(cat, "segments")
    sql = SEGMENTS_SQL.format(
        area="s.area_fraction" if with_area else "NULL::DOUBLE",
        join="LEFT JOIN segments s USING (segment_id)" if with_area else "",
    )
    t = cat.query(sql, [space])
    idx = t.column("image_idx").to_numpy()
    uniq, first, inverse = np.unique(idx, return_index=True, return_inverse=True)
    ids = t.column("image_id").take(pa.array(first)).to_pylist()
    motif = t.column("cluster_id").to_numpy().astype(np.int64)
    area = t.column("area_fraction").to_numpy(zero_copy_only=False).astype(np.float64)
    if not with_area or np.isnan(area).all():
        notes.skip(f"areas:{space}", "no segment geometry: run segment first (area shares null)")
        area_or_none = None
    else:
        area_or_none = area
    k = int(motif.max()) + 1
    flags = cat.query(
        "SELECT cluster_id, is_infrastructure, is_rare_motif, is_foreground FROM motifs_clusters "
        "WHERE space = ?",
        [space],
    )
    cid = flags.column("cluster_id").to_numpy().astype(np.int64)
    cid_ok = cid < k

    def flag(col: str) -> np.ndarray:
        out = np.zeros(k, bool)
        vals = flags.column(col).to_numpy(zero_copy_only=False).astype(bool)
        out[cid[cid_ok]] = vals[cid_ok]
        return out

    seg = SegmentMotifs(inverse.astype(np.int64), motif, area_or_none, len(uniq), k)
    return SpaceMotifs(
        space,
        ids,
        uniq.astype(np.int64),
        seg,
        flag("is_infrastructure"),
        flag("is_rare_motif"),
        flag("is_foreground"),
    )


def _lists(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, typ))


def bag_table(sm: SpaceMotifs, bags: Bags, clusters: np.ndarray) -> pa.Table:
    """The ``motif_bags`` rows of one space (aggregate columns added later)."""
    n = len(sm.image_ids)
    infra, infra_area = shares(bags, sm.is_infrastructure)
    fg, fg_area = shares(bags, sm.is_foreground)
    rare, _ = shares(bags, sm.is_rare)
    nan = np.full(n, np.nan)
    areas = (
        _lists(bags.offsets, bags.area, pa.float32())
        if bags.area is not None
        else pa.nulls(n, pa.list_(pa.float32()))
    )
    return pa.table(
        {
            "image_id": sm.image_ids,
            "image_idx": sm.image_idx,
            "space": [sm.space] * n,
            "n_segments": bags.n_segments.astype(np.int32),
            "n_motifs": np.diff(bags.offsets).astype(np.int32),
            "motif_ids": _lists(bags.offsets, bags.motif.astype(np.int32), pa.int32()),
            "motif_counts": _lists(bags.offsets, bags.count.astype(np.int32), pa.int32()),
            "motif_areas": areas,
            "tfidf": _lists(bags.offsets, bags.tfidf.astype(np.float32), pa.float32()),
            "infrastructure_share": infra.astype(np.float32),
            "foreground_share": fg.astype(np.float32),
            "rare_share": rare.astype(np.float32),
            "infrastructure_area_share": pa.array(
                (infra_area if infra_area is not None else nan).astype(np.float32), from_pandas=True
            ),
            "foreground_area_share": pa.array(
                (fg_area if fg_area is not None else nan).astype(np.float32), from_pandas=True
            ),
            "bag_cluster_id": clusters,
        }
    )


# -- per-image aggregates of other passes ---------------------------------------------------
AGGREGATES: tuple[tuple[str, str, tuple[tuple[str, str], ...], str], ...] = (
    (
        "depth",
        "SELECT image_id, depth_p50, near_fraction, far_fraction, depth_layering_score "
        "FROM depth WHERE error IS NULL",
        (
            ("depth_p50", "FLOAT"),
            ("near_fraction", "FLOAT"),
            ("far_fraction", "FLOAT"),
            ("depth_layering_score", "FLOAT"),
        ),
        "run depth first (exokiratory run depth)",
    ),
    (
        "depth_segments",
        "SELECT m.image_id, m.space, "
        "avg(d.depth_mean) FILTER (WHERE m.is_infrastructure) AS infrastructure_depth, "
        "avg(d.depth_mean) FILTER (WHERE NOT m.is_infrastructure AND NOT m.is_rare_motif) "
        "AS foreground_depth FROM motifs m JOIN depth_segments d USING (segment_id) GROUP BY ALL",
        (("infrastructure_depth", "FLOAT"), ("foreground_depth", "FLOAT")),
        "run depth then depth-segments first",
    ),
    (
        "ocr",
        "SELECT image_id, n_chars AS ocr_n_chars, text_area_fraction AS ocr_text_area_fraction "
        "FROM ocr WHERE error IS NULL",
        (("ocr_n_chars", "INTEGER"), ("ocr_text_area_fraction", "FLOAT")),
        "run ocr first (exokiratory run ocr)",
    ),
    (
        "detect",
        "SELECT d.image_id, d.n_detections, c.top_detection_label FROM detect d LEFT JOIN "
        "(SELECT image_id, first(label ORDER BY count DESC, label) AS top_detection_label "
        " FROM detect_counts WHERE count > 0 GROUP BY 1) c USING (image_id) "
        "WHERE d.error IS NULL",
        (("n_detections", "INTEGER"), ("top_detection_label", "VARCHAR")),
        "run detect first (exokiratory run detect)",
    ),
)


def add_aggregates(cat: Catalog, bags: pa.Table, notes: Notes) -> pa.Table:
    """``bags`` with the depth / OCR / detection columns (null where a pass did not run)."""
    selects, joins = [], []
    for i, (view, sql, cols, hint) in enumerate(AGGREGATES):
        ready = has_rows(cat, view) and (view != "detect" or "detect_counts" in cat.views)
        if ready and view == "depth_segments":
            ready = has_rows(cat, "motifs")
        if not ready:
            notes.skip(f"aggregates:{view}", f"no {view} rows: {hint}")
            selects += [f"NULL::{typ} AS {c}" for c, typ in cols]
            continue
        keys = "image_id, space" if view == "depth_segments" else "image_id"
        joins.append(f"LEFT JOIN ({sql}) a{i} USING ({keys})")
        selects += [f"a{i}.{c}::{typ} AS {c}" for c, typ in cols]
        n = int(cat.scalar(f"SELECT count(*) FROM ({sql})") or 0)
        notes.ok(f"aggregates:{view}", n)
    name = "_synthesis_bags"
    cat.con.register(name, bags)
    try:
        out = cat.query(
            f"SELECT b.*, {', '.join(selects)} FROM {name} b {' '.join(joins)} "
            "ORDER BY b.space, b.image_idx"
        )
    finally:
        cat.con.unregister(name)
    return out.select(MOTIF_BAGS_SCHEMA.names).cast(MOTIF_BAGS_SCHEMA)


# -- frequencies ---------------------------------------------------------------------------
def frequency_table(
    cat: Catalog, sm: SpaceMotifs, bags: Bags, params: MotifBagsParams, notes: Notes
) -> pa.Table:
    """``motif_frequency`` rows of one space: overall, then per image cluster and level."""
    n_bags = int((np.diff(bags.offsets) > 0).sum())
    overall = bags.df / max(n_bags, 1)
    parts = []
    if n_bags >= params.min_group_images:
        all_grp = np.zeros(len(sm.image_ids), np.int64)
        parts.append(_group_rows(sm, bags, all_grp, 1, "all", None, overall, params))
    for view in IMAGE_CLUSTER_VIEWS:
        if not has_rows(cat, view):
            notes.skip(f"frequency:{view}", f"no {view}: run {view.replace('_', '-')} first")
            continue
        t = cat.query(
            f'SELECT level, image_idx, cluster_id FROM "{view}" ORDER BY level, image_idx'
        )
        level = t.column("level").to_numpy()
        for lv in np.unique(level):
            sel = level == lv
            idx = t.column("image_idx").to_numpy()[sel]
            cid = t.column("cluster_id").to_numpy()[sel].astype(np.int64)
            pos = np.searchsorted(sm.image_idx, idx)
            pos = np.clip(pos, 0, len(sm.image_idx) - 1)
            hit = sm.image_idx[pos] == idx
            grp = np.full(len(sm.image_ids), -1, np.int64)
            grp[pos[hit]] = cid[hit]
            n_groups = int(cid.max()) + 1 if len(cid) else 0
            parts.append(_group_rows(sm, bags, grp, n_groups, view, int(lv), overall, params))
    table = pa.concat_tables([MOTIF_FREQUENCY_SCHEMA.empty_table(), *parts])
    notes.ok(f"frequency:{sm.space}", table.num_rows)
    return table


def _group_rows(
    sm: SpaceMotifs,
    bags: Bags,
    grp: np.ndarray,
    n_groups: int,
    kind: str,
    level: int | None,
    overall: np.ndarray,
    params: MotifBagsParams,
) -> pa.Table:
    k = sm.seg.n_motifs
    has_bag = np.diff(bags.offsets) > 0
    size = np.bincount(grp[(grp >= 0) & has_bag], minlength=n_groups)
    g = grp[bags.pair_image]
    ok = g >= 0
    cells, inverse, with_ = np.unique(
        g[ok] * k + bags.motif[ok], return_inverse=True, return_counts=True
    )
    segs = np.bincount(inverse, weights=bags.count[ok], minlength=len(cells))
    gid, mid = cells // k, cells % k
    keep = size[gid] >= params.min_group_images
    gid, mid, with_, segs = gid[keep], mid[keep], with_[keep], segs[keep]
    frac = with_ / np.maximum(size[gid], 1)
    n = len(gid)
    return pa.table(
        {
            "space": [sm.space] * n,
            "motif_id": mid.astype(np.int32),
            "group_kind": [kind] * n,
            "level": pa.array([level] * n, pa.int8()),
            "group_id": pa.nulls(n, pa.int32())
            if kind == "all"
            else pa.array(gid.astype(np.int32), pa.int32()),
            "n_images": size[gid].astype(np.int64),
            "n_images_with": with_.astype(np.int64),
            "n_segments": segs.astype(np.int64),
            "image_fraction": frac.astype(np.float32),
            "lift": (frac / np.where(overall[mid] > 0, overall[mid], 1.0)).astype(np.float32),
            "is_infrastructure": sm.is_infrastructure[mid],
        },
        schema=MOTIF_FREQUENCY_SCHEMA,
    )


# -- the graph -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Graph:
    edges: pa.Table
    nodes: pa.Table
    graphml: bytes


def motif_graph(sm: SpaceMotifs, bags: Bags, params: MotifBagsParams, notes: Notes) -> Graph:
    """Edges (``motif_cooccurrence``), nodes (``motif_communities``) and the GraphML of a space."""
    inc = Incidence(bags.pair_image, bags.motif, len(sm.image_ids), sm.seg.n_motifs)
    co = cooccurrence(
        inc,
        min_motif_images=params.min_motif_images,
        min_pair_images=params.min_pair_images,
        n_shuffles=params.n_shuffles,
        seed=params.seed,
    )
    sig = co.z_score >= params.significance_z
    edges = _edge_table(sm.space, co, sig, params.n_shuffles)
    nodes_ids = np.flatnonzero(bags.df >= params.min_motif_images)
    pos = np.searchsorted(nodes_ids, co.a), np.searchsorted(nodes_ids, co.b)
    use = sig & (co.npmi > 0)
    comm = find_communities(
        len(nodes_ids),
        pos[0][use],
        pos[1][use],
        co.npmi[use],
        method=params.community_method,
        resolution=params.resolution,
        seed=params.seed,
    )
    nodes = _node_table(sm, bags, nodes_ids, pos, use, co, comm)
    notes.ok(
        f"graph:{sm.space}",
        edges.num_rows,
        f"{int(sig.sum())} significant edges, {len(nodes_ids)} motifs, communities: {comm.method}",
    )
    return Graph(edges, nodes, _graphml(sm.space, nodes, edges))


def _edge_table(space: str, co: Cooccurrence, sig: np.ndarray, n_shuffles: int) -> pa.Table:
    n = len(co.a)
    f32 = np.float32
    return pa.table(
        {
            "space": [space] * n,
            "motif_a": co.a.astype(np.int32),
            "motif_b": co.b.astype(np.int32),
            "n_images": np.full(n, co.n_images, np.int64),
            "count": co.count,
            "count_a": co.count_a,
            "count_b": co.count_b,
            "pmi": co.pmi.astype(f32),
            "npmi": co.npmi.astype(f32),
            "expected": co.expected.astype(f32),
            "expected_std": co.expected_std.astype(f32),
            "z_score": co.z_score.astype(f32),
            "p_value": pa.array(co.p_value.astype(f32), from_pandas=True),
            "n_shuffles": np.full(n, n_shuffles, np.int32),
            "is_significant": sig,
        },
        schema=MOTIF_COOCCURRENCE_SCHEMA,
    )


def _node_table(
    sm: SpaceMotifs,
    bags: Bags,
    ids: np.ndarray,
    pos: tuple[np.ndarray, np.ndarray],
    use: np.ndarray,
    co: Cooccurrence,
    comm: Communities,
) -> pa.Table:
    n = len(ids)
    ends = np.concatenate([pos[0][use], pos[1][use]])
    w = np.concatenate([co.npmi[use], co.npmi[use]])
    degree = np.bincount(ends, minlength=n)
    strength = np.bincount(ends, weights=w, minlength=n)
    sizes = np.bincount(comm.membership, minlength=int(comm.membership.max(initial=-1)) + 1)
    return pa.table(
        {
            "space": [sm.space] * n,
            "motif_id": ids.astype(np.int32),
            "community_id": comm.membership.astype(np.int32),
            "community_size": sizes[comm.membership].astype(np.int32),
            "n_images": bags.df[ids],
            "degree": degree.astype(np.int32),
            "strength": strength.astype(np.float32),
            "is_infrastructure": sm.is_infrastructure[ids],
            "is_rare_motif": sm.is_rare[ids],
            "method": [comm.method] * n,
            "modularity": pa.array(
                [comm.modularity] * n if comm.modularity is not None else [None] * n, pa.float32()
            ),
        },
        schema=MOTIF_COMMUNITIES_SCHEMA,
    )


def _graphml(space: str, nodes: pa.Table, edges: pa.Table) -> bytes:
    nd = nodes.to_pydict()
    ed = edges.to_pydict()
    node_cols = {
        "id": [f"{space}:{m}" for m in nd["motif_id"]],
        "label": [f"motif {m}" for m in nd["motif_id"]],
        **{c: nd[c] for c in ("motif_id", "community_id", "n_images", "is_infrastructure")},
    }
    sig = [i for i, s in enumerate(ed["is_significant"]) if s]  # the graph: significant edges
    edge_cols = {
        "source": [f"{space}:{ed['motif_a'][i]}" for i in sig],
        "target": [f"{space}:{ed['motif_b'][i]}" for i in sig],
        **{c: [ed[c][i] for i in sig] for c in ("count", "pmi", "npmi", "z_score")},
    }
    return graphml(node_cols, edge_cols, graph_id=f"motifs-{space}")


# -- everything ----------------------------------------------------------------------------
def derive_motif_tables(
    cat: Catalog, params: MotifBagsParams, notes: Notes
) -> tuple[dict[str, pa.Table], dict[str, bytes]]:
    """The four tables (``""`` bags, ``frequency``, ``cooccurrence``, ``communities``) and the
    GraphML document of each space."""
    bags_t, freq, edges, nodes = [], [], [], []
    docs: dict[str, bytes] = {}
    for space in params.spaces:
        sm = load_space(cat, space, notes)
        if sm is None:
            continue
        bags = motif_bags(sm.seg)
        clusters = bag_clusters(
            bags,
            sm.seg.n_motifs,
            cluster_size=params.bag_cluster_size,
            svd_dims=params.svd_dims,
            seed=params.seed,
            niter=params.niter,
        )
        bags_t.append(bag_table(sm, bags, clusters))
        notes.ok(f"bags:{space}", len(sm.image_ids), f"{sm.seg.n_motifs} motifs")
        freq.append(frequency_table(cat, sm, bags, params, notes))
        graph = motif_graph(sm, bags, params, notes)
        edges.append(graph.edges)
        nodes.append(graph.nodes)
        docs[space] = graph.graphml
    raw = pa.concat_tables(bags_t) if bags_t else None
    table = add_aggregates(cat, raw, notes) if raw is not None else MOTIF_BAGS_SCHEMA.empty_table()
    return {
        "": table,
        "frequency": pa.concat_tables([MOTIF_FREQUENCY_SCHEMA.empty_table(), *freq]),
        "cooccurrence": pa.concat_tables([MOTIF_COOCCURRENCE_SCHEMA.empty_table(), *edges]),
        "communities": pa.concat_tables([MOTIF_COMMUNITIES_SCHEMA.empty_table(), *nodes]),
    }, docs
