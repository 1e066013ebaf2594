"""The embedding family on the report: 2-D maps of the CLIP and DINO embeddings (section ``maps``).

Sampling: the ``map_sample`` images with the smallest ``md5(image_id || seed)`` among those with
an embedding; the same images are drawn in both spaces wherever both embedded them, so the two
maps compare point for point. At 10^6 images only the sample's vectors are projected.

Projection (offline, no download): PCA to 50 dimensions (NumPy, from the covariance), then
t-SNE (scikit-learn, Barnes-Hut above 300 points, PCA initialisation, fixed seed) when
scikit-learn is installed (``pip install 'exokiratory[report]'``; 2,000 points take a few
seconds on 2 cores); otherwise the first two principal components, and the report says so.

Colour fields: cluster id per clustering level (``clusters_<space>``), every boolean flag, the
modality, the zero-shot groups and the routing stratum, when those tables exist. The page draws
the maps in the browser from one JSON block (``exo-maps``), with the thumbnails on hover.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory.core.tables import Tables, qi
from exokiratory.engine.sections import SectionContext, register_section
from exokiratory.passes.clusters.section import cluster_levels
from exokiratory.passes.flags.section import flag_columns, stratum_expression
from exokiratory.passes.zeroshot.section import (
    modality_sql,
    zeroshot_groups,
    zeroshot_sql,
    zeroshot_view,
)

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
MAP_IDS = "_map_ids"


@dataclass
class ColourField:
    name: str
    values: list[str]  # one label per point


@dataclass
class EmbeddingMap:
    space: str
    n_embedded: int
    method: str
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    colours: list[ColourField] = field(default_factory=list)
    note: str = ""
    random_weight: tuple[str, ...] = ()  # ids of the random-weight models that embedded them


def sample_ids(tables: Tables, view: str, n: int, seed: int) -> list[str]:
    rows = tables.cat.rows(
        f"""SELECT image_id FROM {qi(view)} WHERE error IS NULL AND embedding IS NOT NULL
            ORDER BY md5(image_id || ':' || ?), image_id LIMIT ?""",
        [str(int(seed)), int(n)],
    )
    return [str(r[0]) for r in rows]


def load_vectors(tables: Tables, view: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    tables.cat.con.register(MAP_IDS, pa.table({"image_id": ids}))
    try:
        t = tables.cat.query(
            f"SELECT e.image_id, e.embedding FROM {qi(view)} e JOIN {MAP_IDS} USING (image_id) "
            "WHERE e.error IS NULL ORDER BY e.image_id"
        )
    finally:
        tables.cat.con.unregister(MAP_IDS)
    if t.num_rows == 0:
        return [], np.zeros((0, 0), np.float32)
    from exokiratory.search.indices import embedding_matrix

    return t.column("image_id").to_pylist(), embedding_matrix(t.column("embedding"))


def project(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of ``x``, scaled to [0, 1], and the method's name."""
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32), "none"
    xc = x - x.mean(axis=0, keepdims=True)
    if n < 3 or not np.any(xc):
        xy, method = np.zeros((n, 2)), "none (fewer than 3 distinct points)"
    else:
        pcs = _principal_components(xc)
        xy, method = pcs[:, :2], "PCA"
        if n >= 10:
            xy, method = _tsne(pcs, seed, xy, method)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((xy - lo) / span).astype(np.float32), method


def _principal_components(xc: np.ndarray) -> np.ndarray:
    """Up to 50 principal components, from the d x d covariance (n >> d here); signs fixed so
    the same input gives the same picture."""
    xd = xc.astype(np.float64)
    _, vecs = np.linalg.eigh(xd.T @ xd)
    dims = min(50, vecs.shape[1], xc.shape[0])
    top = vecs[:, ::-1][:, :dims]
    signs = np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(dims)])
    signs[signs == 0] = 1
    return np.asarray(xd @ (top * signs))


def _tsne(pcs: np.ndarray, seed: int, xy: np.ndarray, method: str) -> tuple[np.ndarray, str]:
    """t-SNE of the principal components, or (``xy``, ``method``) said to need scikit-learn."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return xy, "PCA (install scikit-learn, the 'report' extra, for t-SNE)"
    n = pcs.shape[0]
    init = pcs[:, :2] / (np.std(pcs[:, 0]) or 1.0) * 1e-4
    tsne = TSNE(
        2,
        perplexity=float(min(30.0, max(2.0, (n - 1) / 3.0))),
        init=init.astype(np.float32),
        random_state=seed,
        max_iter=500,
        learning_rate="auto",
        # Barnes-Hut pays off only on hundreds of points; exact is instant below
        method="exact" if n <= 300 else "barnes_hut",
    )
    return tsne.fit_transform(pcs.astype(np.float32)), "t-SNE of 50 principal components"


def _lookup(tables: Tables, sql: str, ids: list[str]) -> dict[str, Any]:
    tables.cat.con.register(MAP_IDS, pa.table({"image_id": ids}))
    try:
        return {str(k): v for k, v in tables.cat.rows(sql)}
    finally:
        tables.cat.con.unregister(MAP_IDS)


def _label(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _field(tables: Tables, name: str, sql: str, ids: list[str]) -> ColourField:
    got = _lookup(tables, sql, ids)
    return ColourField(name, [_label(got.get(i)) for i in ids])


def _cluster_fields(tables: Tables, space: str, ids: list[str]) -> list[ColourField]:
    """Cluster ids per level, of this space first, then of the other spaces."""
    out = []
    for sp in (space, *(s for s in SPACES if s != space)):
        view = f"clusters_{sp}"
        has_level = tables.has(view, "level")
        for level, k in cluster_levels(tables, sp):
            where = f"AND c.level = {level}" if has_level else ""
            sql = (
                f"SELECT c.image_id, c.cluster_id FROM {view} c JOIN {MAP_IDS} USING (image_id) "
                f"WHERE true {where}"
            )
            out.append(_field(tables, f"{sp.upper()} cluster, level {level} (k={k})", sql, ids))
    return out


def _label_fields(tables: Tables, ids: list[str]) -> list[ColourField]:
    """Modality, zero-shot groups, and the routing stratum when no modality exists."""
    out = []
    src = modality_sql(tables)
    if src is not None:
        sql = f"SELECT m.image_id, m.label FROM ({src[0]}) m JOIN {MAP_IDS} USING (image_id)"
        out.append(_field(tables, "modality", sql, ids))
    zs = zeroshot_view(tables)
    for group in zeroshot_groups(tables) if zs is not None else []:
        if group == "modality" and src is not None and src[0] == zeroshot_sql(zs or "", group):
            continue
        sql = (
            f"SELECT z.image_id, z.label FROM ({zeroshot_sql(zs or '', group)}) z "
            f"JOIN {MAP_IDS} USING (image_id)"
        )
        out.append(_field(tables, f"zero-shot: {group}", sql, ids))
    strata = stratum_expression(tables)
    if strata is not None and src is None:
        sql = f"SELECT f.image_id, {strata[1]} FROM {strata[0]} JOIN {MAP_IDS} USING (image_id)"
        out.append(_field(tables, "stratum", sql, ids))
    return out


def _flag_fields(tables: Tables, ids: list[str]) -> list[ColourField]:
    """Every boolean flag, in one read of the sample's rows."""
    flags = flag_columns(tables)
    if not flags:
        return []
    tables.cat.con.register(MAP_IDS, pa.table({"image_id": ids}))
    try:
        cols = ", ".join(f"f.{qi(f)}" for f in flags)
        rows = {
            str(r[0]): r[1:]
            for r in tables.cat.rows(
                f"SELECT f.image_id, {cols} FROM flags f JOIN {MAP_IDS} USING (image_id)"
            )
        }
    finally:
        tables.cat.con.unregister(MAP_IDS)
    return [
        ColourField(flag, [_label(rows[i][j] if i in rows else None) for i in ids])
        for j, flag in enumerate(flags)
    ]


def colour_fields(tables: Tables, space: str, ids: list[str]) -> list[ColourField]:
    fmt = "SELECT i.image_id, i.format FROM images i JOIN _map_ids USING (image_id)"
    return [
        *_cluster_fields(tables, space, ids),
        *_label_fields(tables, ids),
        *_flag_fields(tables, ids),
        _field(tables, "format", fmt, ids),
    ]


def gather_maps(tables: Tables, n: int, seed: int) -> list[EmbeddingMap]:
    """One map per embedding space that has vectors; same sampled images in both."""
    maps = []
    for space in (s for s in SPACES if tables.nonempty(f"embeddings_{s}")):
        view = f"embeddings_{space}"
        n_embedded = int(tables.cat.scalar(f"SELECT count(*) FROM {view} WHERE error IS NULL") or 0)
        ids, x = load_vectors(tables, view, sample_ids(tables, view, n, seed))
        xy, method = project(x, seed)
        paths = _lookup(
            tables,
            f"SELECT i.image_id, i.first_path FROM images i JOIN {MAP_IDS} USING (image_id)",
            ids,
        )
        m = EmbeddingMap(space, n_embedded, method, ids, [str(paths.get(i) or "") for i in ids])
        m.xy = xy
        m.colours = colour_fields(tables, space, ids)
        if len(ids) < n_embedded:
            m.note = f"a seeded sample of {len(ids)} of {n_embedded} embedded images"
        maps.append(m)
    return maps


def map_json(m: EmbeddingMap) -> dict[str, Any]:
    """What the page's script draws: points, paths, and each colour field as label codes (the
    commonest label first, ``(none)`` last)."""
    colours = []
    for f in m.colours:
        counts = Counter(f.values)
        labels = sorted(counts, key=lambda k: (k == "(none)", -counts[k], k))
        index = {k: i for i, k in enumerate(labels)}
        colours.append(
            {
                "name": f.name,
                "labels": labels,
                "counts": [counts[k] for k in labels],
                "codes": [index[v] for v in f.values],
            }
        )
    return {
        "space": m.space,
        "ids": m.ids,
        "paths": m.paths,
        "x": [round(float(v), 4) for v in m.xy[:, 0]],
        "y": [round(float(v), 4) for v in m.xy[:, 1]],
        "colours": colours,
    }


@dataclass
class Maps:
    maps: list[EmbeddingMap]
    json: list[dict[str, Any]]


@register_section(
    "maps",
    title="Embedding maps",
    nav="maps",
    order=50,
    template="maps.html.j2",
    needs=("embeddings_*",),
    missing="not computed yet: run {run} (needs the ml extra), then build the report again",
)
def gather_embedding_maps(ctx: SectionContext) -> Maps:
    """Always data (maybe no map): the page's map script reads the ``exo-maps`` block."""
    maps = gather_maps(ctx.tables, ctx.params.map_sample, ctx.params.seed)
    for m in maps:
        m.random_weight = tuple(ctx.random_weight.get(f"embeddings_{m.space}", ()))
        for i in sorted(set(m.ids)):
            ctx.thumbs.image(i)
    return Maps(maps, [map_json(m) for m in maps])
