"""2-D maps of the CLIP and DINO embeddings: a seeded sample, projected, with colour fields.

Sampling: the ``map_sample`` images with the smallest ``md5(image_id || seed)`` among those with
an embedding; the same images are drawn in both spaces wherever both embedded them, so the two
maps compare point for point. At 10^6 images only the sample's vectors are projected.

Projection (offline, no download): PCA to 50 dimensions (NumPy, from the covariance), then
t-SNE (scikit-learn, Barnes-Hut above 300 points, PCA initialisation, fixed seed) when
scikit-learn is installed (``pip install 'exokiratory[report]'``; 2,000 points take a few
seconds on 2 cores); otherwise the first two principal components, and the report says so.

Colour fields: cluster id per clustering level (``clusters_<space>``), every boolean flag, the
modality and the routing stratum, when those tables exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory.report.galleries import cluster_levels, stratum_expression
from exokiratory.report.overview import (
    flag_columns,
    modality_sql,
    zeroshot_groups,
    zeroshot_sql,
    zeroshot_view,
)
from exokiratory.report.tables import Tables, qi

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")


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


def sample_ids(tables: Tables, view: str, n: int, seed: int) -> list[str]:
    rows = tables.cat.rows(
        f"""SELECT image_id FROM {qi(view)} WHERE error IS NULL AND embedding IS NOT NULL
            ORDER BY md5(image_id || ':' || ?), image_id LIMIT ?""",
        [str(int(seed)), int(n)],
    )
    return [str(r[0]) for r in rows]


def load_vectors(tables: Tables, view: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    tables.cat.con.register("_map_ids", pa.table({"image_id": ids}))
    try:
        t = tables.cat.query(
            f"SELECT e.image_id, e.embedding FROM {qi(view)} e JOIN _map_ids USING (image_id) "
            "WHERE e.error IS NULL ORDER BY e.image_id"
        )
    finally:
        tables.cat.con.unregister("_map_ids")
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
        xy = np.zeros((n, 2))
        method = "none (fewer than 3 distinct points)"
    else:
        # PCA from the d x d covariance (n >> d here); signs fixed so the same input gives
        # the same picture
        xd = xc.astype(np.float64)
        _, vecs = np.linalg.eigh(xd.T @ xd)
        dims = min(50, vecs.shape[1], n)
        top = vecs[:, ::-1][:, :dims]
        signs = np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(dims)])
        signs[signs == 0] = 1
        pcs = xd @ (top * signs)
        xy, method = pcs[:, :2], "PCA"
        if n >= 10:
            try:
                from sklearn.manifold import TSNE
            except ImportError:
                method = "PCA (install scikit-learn, the 'report' extra, for t-SNE)"
            else:
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
                xy = tsne.fit_transform(pcs.astype(np.float32))
                method = "t-SNE of 50 principal components"
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((xy - lo) / span).astype(np.float32), method


def _lookup(tables: Tables, sql: str, ids: list[str]) -> dict[str, Any]:
    tables.cat.con.register("_map_ids", pa.table({"image_id": ids}))
    try:
        return {str(k): v for k, v in tables.cat.rows(sql)}
    finally:
        tables.cat.con.unregister("_map_ids")


def colour_fields(tables: Tables, space: str, ids: list[str]) -> list[ColourField]:
    out: list[ColourField] = []

    def add(name: str, sql: str) -> None:
        got = _lookup(tables, sql, ids)
        out.append(ColourField(name, [_label(got.get(i)) for i in ids]))

    for sp in (space, *(s for s in SPACES if s != space)):
        view = f"clusters_{sp}"
        has_level = tables.has(view, "level")
        for level, k in cluster_levels(tables, sp):
            where = f"AND c.level = {level}" if has_level else ""
            add(
                f"{sp.upper()} cluster, level {level} (k={k})",
                f"SELECT c.image_id, c.cluster_id FROM {view} c JOIN _map_ids USING (image_id) "
                f"WHERE true {where}",
            )
    src = modality_sql(tables)
    if src is not None:
        add(
            "modality",
            f"SELECT m.image_id, m.label FROM ({src[0]}) m JOIN _map_ids USING (image_id)",
        )
    zs = zeroshot_view(tables)
    for group in zeroshot_groups(tables) if zs is not None else []:
        if group == "modality" and src is not None and src[0] == zeroshot_sql(zs or "", group):
            continue
        add(
            f"zero-shot: {group}",
            f"SELECT z.image_id, z.label FROM ({zeroshot_sql(zs or '', group)}) z "
            "JOIN _map_ids USING (image_id)",
        )
    strata = stratum_expression(tables)
    if strata is not None and src is None:
        add(
            "stratum",
            f"SELECT f.image_id, {strata[1]} FROM {strata[0]} JOIN _map_ids USING (image_id)",
        )
    flags = flag_columns(tables)
    if flags:  # every flag in one read of the sample's rows
        tables.cat.con.register("_map_ids", pa.table({"image_id": ids}))
        try:
            cols = ", ".join(f"f.{qi(f)}" for f in flags)
            rows = {
                str(r[0]): r[1:]
                for r in tables.cat.rows(
                    f"SELECT f.image_id, {cols} FROM flags f JOIN _map_ids USING (image_id)"
                )
            }
        finally:
            tables.cat.con.unregister("_map_ids")
        for j, flag in enumerate(flags):
            out.append(ColourField(flag, [_label(rows[i][j] if i in rows else None) for i in ids]))
    add("format", "SELECT i.image_id, i.format FROM images i JOIN _map_ids USING (image_id)")
    return out


def _label(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def gather_maps(tables: Tables, n: int, seed: int) -> list[EmbeddingMap]:
    """One map per embedding space that has vectors; same sampled images in both."""
    maps = []
    spaces = [s for s in SPACES if tables.nonempty(f"embeddings_{s}")]
    for space in spaces:
        view = f"embeddings_{space}"
        n_embedded = int(tables.cat.scalar(f"SELECT count(*) FROM {view} WHERE error IS NULL") or 0)
        ids = sample_ids(tables, view, n, seed)
        ids, x = load_vectors(tables, view, ids)
        xy, method = project(x, seed)
        paths = _lookup(
            tables,
            "SELECT i.image_id, i.first_path FROM images i JOIN _map_ids USING (image_id)",
            ids,
        )
        m = EmbeddingMap(space, n_embedded, method, ids, [str(paths.get(i) or "") for i in ids])
        m.xy = xy
        m.colours = colour_fields(tables, space, ids)
        if len(ids) < n_embedded:
            m.note = f"a seeded sample of {len(ids)} of {n_embedded} embedded images"
        maps.append(m)
    return maps
