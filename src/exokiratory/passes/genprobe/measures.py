"""The generative-probing measures: pure computations over stored vectors (never pixels).

Inputs, per embedding space ``S`` (``clip``, ``dino``) whose generations were re-embedded with
the same model as the real images (``genprobe_outputs.<S>_model_id`` = ``embeddings_<S>.model_id``;
another model: the space is skipped, said in the log): the generations' vectors ``g``, the real
images' vectors (``embeddings_<S>``; the exemplar's own is ``e``), the clusters of ``S`` at
``level`` (-1 = coarsest) and, for fragile motifs, the motifs of ``S`` (PASS 4). Cosines are
of L2-normalised vectors.

**Style stability** (``genprobe_stability``: one row per exemplar, space, conditioning and
strength). A generation *stays* when its nearest real cluster (highest cosine to a centroid of
``clusters_<S>_summary`` at the level) is the exemplar's own cluster. ``stability_score`` = the
fraction of the generations (seeds) that stay; ``is_stable`` = ``stability_score >=
stay_threshold`` (0.5); ``mean_exemplar_similarity`` = mean ``cos(g, e)``; ``hole_fraction``
= fraction of them that are holes (below). Per exemplar and conditioning
(``genprobe_exemplars``): ``leave_strength`` = the lowest probed strength that is not stable
(null: the generations never leave the cluster) and ``max_stable_strength`` = the highest
strength below which every probed strength is stable (null when the lowest already leaves).
Per cluster (``genprobe_stability_clusters``, one row per cluster, conditioning and strength):
the same over all its exemplars' generations, with the cluster curve's ``leave_strength``.

**Holes in the manifold** (``genprobe_holes``: one row per generation and space).
``knn_distance`` = mean cosine distance ``1 - cos`` of the generation to its ``k`` (10) nearest
real images. The reference is the real data's own distribution: the same distance of real
images to their ``k`` nearest *other* real images, over a deterministic sample of at most
``reference_sample`` (5000) real images; ``hole_threshold`` = its ``hole_quantile`` (0.99)
quantile. ``hole_score = knn_distance / hole_threshold`` (above 1: farther from every real image
than 99 % of the real images are from their neighbours); ``is_hole = hole_score > 1``.
``nearest_image_id`` is the closest real image.

**Reconstruction-distance outlier score** (LMD-style, Liu et al. 2023: perturb, map back,
measure; ``genprobe_exemplars``). ``reconstruction_distance`` = mean ``1 - cos(g, e)`` over the
seeds at ``reconstruction_strength`` (default: the lowest probed strength), per conditioning:
noise is added to the exemplar and the model maps it back; an image the model cannot reproduce
drifts further. ``reconstruction_outlier_score`` = its robust z (``side='high'``, median and
1.4826 MAD over the exemplars of the same space and conditioning, ``MIN_SCALE`` floor);
``is_reconstruction_outlier`` above ``reconstruction_z`` (3.5). Next to it, for comparison, the
embedding outlier scores of PASS 2 (``embedding_outlier_score``, and ``knn_distance`` =
``flags.knn_distance_<S>``) when the flags exist; the report shows the Spearman rank
correlation of the two scores over the exemplars (:func:`rank_correlation`).

**Fragile motifs** (``genprobe_fragile``: one row per exemplar, space, motif, conditioning and
strength), measured in embedding space. A motif ``m`` of the exemplar is a motif cluster
(``motifs`` view) holding one of its segments; its centroid ``c_m`` lives in the same space
(segment crops embedded by the same model). Its *presence* in an image with global vector
``x`` is ``cos(x, c_m)``. ``presence_exemplar`` = ``cos(e, c_m)``; ``presence_generated`` = the
mean over the seeds of ``cos(g, c_m)``; ``retention = presence_generated /
presence_exemplar`` and ``fragility_score = 1 - retention``, only when ``presence_exemplar >=
min_presence`` (0.1; below it the motif hardly shows in the exemplar's global vector and is not
scored: null). ``is_fragile`` = ``fragility_score >= fragile_threshold`` (0.25) while the style
is kept (``stay_fraction >= stay_threshold``; without clusters of that space, the motif
condition alone): the motif goes while the picture stays in its cluster.

Why embedding space and not segmenting the generations: segmenting each generation costs a SAM
forward (ViT-H: about 3 TFLOPs) plus one crop embedding per mask (dozens), 10-100 times the
generation's re-embedding, which the measures need anyway; the motif centroids are already in
the same space, so presence is one dot product per (generation, motif). The price: a global
vector dilutes small motifs, hence each motif is compared with its own presence in the
exemplar (a ratio), and motifs the exemplar's global vector barely shows are left unscored
rather than guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.core.robust import robust_z
from exokiratory.engine.step import PassParams

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
MIN_SCALE = 0.01


class MeasuresParams(PassParams):
    level: int = Field(-1, description="cluster level of 'nearest real cluster' (-1: coarsest)")
    stay_threshold: float = Field(0.5, ge=0.0, le=1.0, description="stable: this fraction stays")
    k: int = Field(10, ge=1, le=1000, description="nearest real images of the k-NN distance")
    hole_quantile: float = Field(0.99, gt=0.0, lt=1.0, description="of the real k-NN distances")
    reference_sample: int = Field(5000, ge=10, description="real images in the reference")
    reconstruction_strength: float | None = Field(
        None, gt=0.0, le=1.0, description="strength of the reconstruction score (None: lowest)"
    )
    reconstruction_z: float = Field(3.5, gt=0.0)
    min_presence: float = Field(0.1, ge=0.0, le=1.0, description="motif presence to be scored")
    fragile_threshold: float = Field(0.25, gt=0.0, description="fragility_score of a fragile motif")
    seed: int = 0


_KEYS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("space", pa.string(), nullable=False),
    pa.field("conditioning", pa.string(), nullable=False),
]

STABILITY_SCHEMA = pa.schema(
    [
        *_KEYS,
        pa.field("strength", pa.float32(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("cluster_id", pa.int32()),
        pa.field("n_generations", pa.int32()),
        pa.field("stability_score", pa.float32()),
        pa.field("is_stable", pa.bool_()),
        pa.field("mean_exemplar_similarity", pa.float32()),
        pa.field("hole_fraction", pa.float32()),
    ]
)

CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("space", pa.string(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("cluster_id", pa.int32()),
        pa.field("conditioning", pa.string(), nullable=False),
        pa.field("strength", pa.float32(), nullable=False),
        pa.field("n_exemplars", pa.int32()),
        pa.field("n_generations", pa.int32()),
        pa.field("stability_score", pa.float32()),
        pa.field("is_stable", pa.bool_()),
        pa.field("leave_strength", pa.float32()),
        pa.field("mean_exemplar_similarity", pa.float32()),
        pa.field("hole_fraction", pa.float32()),
    ]
)

EXEMPLARS_SCHEMA = pa.schema(
    [
        *_KEYS,
        pa.field("level", pa.int8()),
        pa.field("cluster_id", pa.int32()),
        pa.field("n_strengths", pa.int32()),
        pa.field("leave_strength", pa.float32()),
        pa.field("max_stable_strength", pa.float32()),
        pa.field("reconstruction_strength", pa.float32()),
        pa.field("reconstruction_distance", pa.float32()),
        pa.field("reconstruction_outlier_score", pa.float32()),
        pa.field("is_reconstruction_outlier", pa.bool_()),
        pa.field("embedding_outlier_score", pa.float32()),
        pa.field("knn_distance", pa.float32()),
    ]
)

HOLES_SCHEMA = pa.schema(
    [
        pa.field("gen_id", pa.string(), nullable=False),
        *_KEYS,
        pa.field("strength", pa.float32()),
        pa.field("seed", pa.int64()),
        pa.field("knn_distance", pa.float32()),
        pa.field("hole_threshold", pa.float32()),
        pa.field("hole_score", pa.float32()),
        pa.field("is_hole", pa.bool_()),
        pa.field("nearest_image_id", pa.string()),
        pa.field("nearest_cluster_id", pa.int32()),
    ]
)

FRAGILE_SCHEMA = pa.schema(
    [
        *_KEYS,
        pa.field("strength", pa.float32(), nullable=False),
        pa.field("motif_cluster_id", pa.int32(), nullable=False),
        pa.field("n_segments", pa.int32()),
        pa.field("is_infrastructure", pa.bool_()),
        pa.field("is_rare_motif", pa.bool_()),
        pa.field("n_generations", pa.int32()),
        pa.field("presence_exemplar", pa.float32()),
        pa.field("presence_generated", pa.float32()),
        pa.field("fragility_score", pa.float32()),
        pa.field("stay_fraction", pa.float32()),
        pa.field("is_fragile", pa.bool_()),
    ]
)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Space:
    """The vectors of one space: generations (with their exemplar's row in ``real``), the real
    images, and the clusters at the chosen level (None when missing)."""

    space: str
    gen_id: list[str]
    image_id: list[str]
    conditioning: list[str]
    strength: np.ndarray
    seed: np.ndarray
    g: np.ndarray
    e: np.ndarray
    real_ids: list[str]
    real: np.ndarray
    level: int | None = None
    centroids: np.ndarray | None = None
    cluster_of: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.gen_id)

    def own_cluster(self) -> np.ndarray:
        return np.asarray([self.cluster_of.get(i, -1) for i in self.image_id], np.int64)

    def nearest_cluster(self) -> np.ndarray:
        if self.centroids is None or not len(self.centroids):
            return np.full(self.n, -1, np.int64)
        return np.asarray(np.argmax(self.g @ self.centroids.T, axis=1), np.int64)


def load_space(catalog: Catalog, space: str, level: int) -> Space | None:
    """The inputs of ``space`` (see the module docstring), or None when they are missing."""
    from exokiratory.search.indices import embedding_matrix, load_embeddings

    col = f"{space}_embedding"
    t = catalog.query(
        f"""SELECT gen_id, image_id, conditioning, strength, seed, {col} AS v,
                   {space}_model_id AS model_id
            FROM genprobe_outputs WHERE error IS NULL AND {col} IS NOT NULL ORDER BY gen_id"""
    )
    if t.num_rows == 0:
        return None
    try:
        real, _idx, real_ids, real_model = load_embeddings(catalog, space)
    except ValueError:
        log.info("genprobe measures: no %s embeddings of the real images; %s skipped", space, space)
        return None
    models = set(t.column("model_id").to_pylist())
    if models != {real_model}:
        log.warning(
            "genprobe measures: %s generations were embedded with %s, the real images with %s; "
            "%s skipped (rerun genprobe with the embed-%s model)",
            space,
            sorted(models),
            real_model,
            space,
            space,
        )
        return None
    row = {i: r for r, i in enumerate(real_ids)}
    keep = np.asarray([i in row for i in t.column("image_id").to_pylist()], bool)
    t = t.filter(pa.array(keep))
    if t.num_rows == 0:
        return None
    real = normalise(real)
    ids = t.column("image_id").to_pylist()
    out = Space(
        space,
        t.column("gen_id").to_pylist(),
        ids,
        t.column("conditioning").to_pylist(),
        t.column("strength").to_numpy().astype(np.float32),
        t.column("seed").to_numpy().astype(np.int64),
        normalise(embedding_matrix(t.column("v"))),
        real[[row[i] for i in ids]],
        real_ids,
        real,
    )
    _attach_clusters(catalog, out, level)
    return out


def _attach_clusters(catalog: Catalog, s: Space, level: int) -> None:
    view = f"clusters_{s.space}"
    if view not in catalog.views:
        return
    levels = sorted(int(r[0]) for r in catalog.rows(f"SELECT DISTINCT level FROM {view}"))
    if not levels or not -len(levels) <= level < len(levels):
        return
    lv = levels[level]
    s.level = lv
    s.cluster_of = {
        str(a): int(b)
        for a, b in catalog.rows(f"SELECT image_id, cluster_id FROM {view} WHERE level = {lv}")
    }
    summary = catalog.query(
        f"SELECT cluster_id, centroid FROM {view}_summary WHERE level = {lv} ORDER BY cluster_id"
    )
    k = int(max(s.cluster_of.values(), default=-1)) + 1
    cents = np.zeros((k, s.g.shape[1]), np.float32)
    for cid, c in zip(
        summary.column("cluster_id").to_pylist(),
        summary.column("centroid").to_pylist(),
        strict=True,
    ):
        if c is not None and 0 <= int(cid) < k and len(c) == s.g.shape[1]:
            cents[int(cid)] = c
    s.centroids = normalise(cents)


# -- k-NN ----------------------------------------------------------------------------------------
def knn(
    queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean cosine distance to the ``k`` nearest rows of ``base``, index of the nearest), exact,
    in chunks; ``exclude[i]``: a row of ``base`` that query ``i`` may not use (itself)."""
    k = max(1, min(k, len(base) - (0 if exclude is None else 1)))
    dist = np.zeros(len(queries), np.float32)
    nearest = np.zeros(len(queries), np.int64)
    for start in range(0, len(queries), 1024):
        sims = queries[start : start + 1024] @ base.T
        if exclude is not None:
            sims[np.arange(len(sims)), exclude[start : start + 1024]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        dist[start : start + len(sims)] = np.mean(1.0 - top_sims, axis=1)
        nearest[start : start + len(sims)] = np.argmax(sims, axis=1)
    return dist, nearest


def hole_threshold(real: np.ndarray, p: MeasuresParams) -> float:
    """The ``hole_quantile`` of the real images' own k-NN distances (a seeded sample)."""
    n = len(real)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(p.seed)
    rows = np.sort(rng.choice(n, size=min(n, p.reference_sample), replace=False))
    dist, _ = knn(real[rows], real, p.k, exclude=rows)
    return float(np.quantile(dist, p.hole_quantile))


def holes(s: Space, p: MeasuresParams) -> pa.Table:
    threshold = hole_threshold(s.real, p)
    dist, nearest = knn(s.g, s.real, p.k)
    score = dist / threshold if threshold > 0 else np.full(s.n, np.nan, np.float32)
    near_cluster = s.nearest_cluster() if s.centroids is not None else None
    return pa.table(
        {
            "gen_id": s.gen_id,
            "image_id": s.image_id,
            "space": [s.space] * s.n,
            "conditioning": s.conditioning,
            "strength": s.strength,
            "seed": s.seed,
            "knn_distance": dist,
            "hole_threshold": np.full(s.n, threshold, np.float32),
            "hole_score": score.astype(np.float32),
            "is_hole": np.asarray(np.nan_to_num(score, nan=0.0), np.float64) > 1.0,
            "nearest_image_id": [s.real_ids[i] for i in nearest],
            "nearest_cluster_id": pa.nulls(s.n, pa.int32())
            if near_cluster is None
            else pa.array(near_cluster.astype(np.int32), pa.int32()),
        },
        schema=HOLES_SCHEMA,
    )


# -- stability -----------------------------------------------------------------------------------
def _groups(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], np.ndarray]:
    out: dict[tuple[Any, ...], list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return {k: np.asarray(v, np.int64) for k, v in sorted(out.items(), key=lambda kv: kv[0])}


def _leave(curve: list[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(lowest unstable strength, highest strength below which all are stable)."""
    curve = sorted(curve)
    leave = next((s for s, ok in curve if not ok), None)
    stable = [s for s, ok in curve if leave is None or s < leave]
    return leave, (stable[-1] if stable else None)


def stability(s: Space, is_hole: np.ndarray, p: MeasuresParams) -> tuple[pa.Table, pa.Table]:
    """``genprobe_stability`` rows and the per-cluster rows of one space."""
    own, near = s.own_cluster(), s.nearest_cluster()
    has_clusters = s.centroids is not None
    stays = (own == near) & (own >= 0)
    sim = np.einsum("nd,nd->n", s.g, s.e)
    rows: list[dict[str, Any]] = []
    keys = [
        (i, c, float(st)) for i, c, st in zip(s.image_id, s.conditioning, s.strength, strict=True)
    ]
    for (image_id, cond, strength), idx in _groups(keys).items():
        score = float(stays[idx].mean()) if has_clusters else None
        rows.append(
            {
                "image_id": image_id,
                "space": s.space,
                "conditioning": cond,
                "strength": strength,
                "level": s.level,
                "cluster_id": int(own[idx[0]]) if own[idx[0]] >= 0 else None,
                "n_generations": len(idx),
                "stability_score": score,
                "is_stable": None if score is None else score >= p.stay_threshold,
                "mean_exemplar_similarity": float(sim[idx].mean()),
                "hole_fraction": float(is_hole[idx].mean()),
            }
        )
    per_cluster: list[dict[str, Any]] = []
    if has_clusters:
        ckeys = [
            (int(o), c, float(st)) for o, c, st in zip(own, s.conditioning, s.strength, strict=True)
        ]
        groups = {k: v for k, v in _groups(ckeys).items() if k[0] >= 0}
        for (cid, cond, strength), idx in groups.items():
            score = float(stays[idx].mean())
            per_cluster.append(
                {
                    "space": s.space,
                    "level": s.level,
                    "cluster_id": cid,
                    "conditioning": cond,
                    "strength": strength,
                    "n_exemplars": len({s.image_id[i] for i in idx}),
                    "n_generations": len(idx),
                    "stability_score": score,
                    "is_stable": score >= p.stay_threshold,
                    "mean_exemplar_similarity": float(sim[idx].mean()),
                    "hole_fraction": float(is_hole[idx].mean()),
                }
            )
        curves: dict[tuple[int, str], list[tuple[float, bool]]] = {}
        for r in per_cluster:
            curves.setdefault((r["cluster_id"], r["conditioning"]), []).append(
                (r["strength"], r["is_stable"])
            )
        for r in per_cluster:
            r["leave_strength"] = _leave(curves[(r["cluster_id"], r["conditioning"])])[0]
    return (
        pa.Table.from_pylist(rows, schema=STABILITY_SCHEMA),
        pa.Table.from_pylist(per_cluster, schema=CLUSTERS_SCHEMA),
    )


def exemplar_table(
    s: Space, stab: pa.Table, p: MeasuresParams, outliers: dict[str, dict[str, float | None]]
) -> pa.Table:
    """Per exemplar and conditioning: where its generations leave, and the reconstruction
    outlier score (with PASS 2's embedding outlier scores beside it)."""
    strengths = sorted({float(x) for x in s.strength})
    rec_strength = p.reconstruction_strength
    if rec_strength is None:
        rec_strength = strengths[0] if strengths else None
    dist = 1.0 - np.einsum("nd,nd->n", s.g, s.e)
    keys = [(i, c) for i, c in zip(s.image_id, s.conditioning, strict=True)]
    curves: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for r in stab.to_pylist():
        if r["is_stable"] is not None:
            curves.setdefault((r["image_id"], r["conditioning"]), []).append(
                (r["strength"], r["is_stable"])
            )
    rows = []
    for (image_id, cond), idx in _groups(keys).items():
        at = idx[np.isclose(s.strength[idx], rec_strength)] if rec_strength is not None else idx[:0]
        leave, max_stable = (
            _leave(curves.get((image_id, cond), [])) if (image_id, cond) in curves else (None, None)
        )
        own = s.cluster_of.get(image_id)
        flags = outliers.get(image_id, {})
        rows.append(
            {
                "image_id": image_id,
                "space": s.space,
                "conditioning": cond,
                "level": s.level,
                "cluster_id": own,
                "n_strengths": len({float(x) for x in s.strength[idx]}),
                "leave_strength": leave,
                "max_stable_strength": max_stable,
                "reconstruction_strength": rec_strength if len(at) else None,
                "reconstruction_distance": float(dist[at].mean()) if len(at) else None,
                "embedding_outlier_score": flags.get("embedding_outlier_score"),
                "knn_distance": flags.get(f"knn_distance_{s.space}"),
            }
        )
    by_cond: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["reconstruction_distance"] is not None:
            by_cond.setdefault(r["conditioning"], []).append(i)
    for members in by_cond.values():
        d = np.asarray([rows[i]["reconstruction_distance"] for i in members], np.float64)
        z = robust_z(d, "high", min_sigma=MIN_SCALE)
        for i, v in zip(members, z, strict=True):
            rows[i]["reconstruction_outlier_score"] = float(v)
            rows[i]["is_reconstruction_outlier"] = bool(v > p.reconstruction_z)
    return pa.Table.from_pylist(rows, schema=EXEMPLARS_SCHEMA)


def flag_scores(catalog: Catalog) -> dict[str, dict[str, float | None]]:
    """PASS 2's embedding outlier scores per image (empty without flags)."""
    if "flags" not in catalog.views:
        return {}
    cols = [
        c
        for c in ("embedding_outlier_score", "knn_distance_clip", "knn_distance_dino")
        if c in set(catalog.query("SELECT * FROM flags LIMIT 0").column_names)
    ]
    if not cols:
        return {}
    t = catalog.query(f"SELECT image_id, {', '.join(cols)} FROM flags")
    return {r.pop("image_id"): r for r in t.to_pylist()}


# -- fragile motifs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Motif:
    """A motif cluster of one space: its centroid and kind."""

    cluster_id: int
    centroid: np.ndarray
    is_infrastructure: bool | None = None
    is_rare_motif: bool | None = None


def load_motifs(catalog: Catalog, s: Space) -> dict[str, list[tuple[Motif, int]]]:
    """Per exemplar image: its motifs in ``s.space`` with its number of segments in each (empty
    without motifs, or when the segments were embedded with another model than ``s``)."""
    if "motifs" not in catalog.views or "motifs_clusters" not in catalog.views:
        return {}
    seg_view = f"segment_embeddings_{s.space}"
    if seg_view in catalog.views:
        seg_models = {
            r[0]
            for r in catalog.rows(f"SELECT DISTINCT model_id FROM {seg_view} WHERE error IS NULL")
        }
        gen_model = catalog.scalar(
            f"SELECT any_value({s.space}_model_id) FROM genprobe_outputs WHERE error IS NULL"
        )
        if seg_models and seg_models != {gen_model}:
            log.warning("genprobe fragile: %s motifs come from another model; skipped", s.space)
            return {}
    space = s.space.replace("'", "")
    cent = {
        int(r["cluster_id"]): Motif(
            int(r["cluster_id"]),
            normalise(np.asarray([r["centroid"]], np.float32))[0],
            r["is_infrastructure"],
            r["is_rare_motif"],
        )
        for r in catalog.query(
            f"""SELECT cluster_id, centroid, is_infrastructure, is_rare_motif FROM motifs_clusters
                WHERE space = '{space}' AND centroid IS NOT NULL"""
        ).to_pylist()
    }
    members = catalog.query(
        f"""SELECT image_id, cluster_id, count(*) AS n FROM motifs
            WHERE space = '{space}' AND cluster_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"""
    ).to_pylist()
    out: dict[str, list[tuple[Motif, int]]] = {}
    for r in members:
        m = cent.get(int(r["cluster_id"]))
        if m is not None and len(m.centroid) == s.g.shape[1]:
            out.setdefault(r["image_id"], []).append((m, int(r["n"])))
    return out


def fragile(
    s: Space, stab: pa.Table, motifs_of: dict[str, list[tuple[Motif, int]]], p: MeasuresParams
) -> pa.Table:
    """``genprobe_fragile`` rows of one space (see the module docstring)."""
    stay = {
        (r["image_id"], r["conditioning"], r["strength"]): r["stability_score"]
        for r in stab.to_pylist()
    }
    keys = [
        (i, c, float(st)) for i, c, st in zip(s.image_id, s.conditioning, s.strength, strict=True)
    ]
    rows = []
    for (image_id, cond, strength), idx in _groups(keys).items():
        for motif, n_seg in motifs_of.get(image_id, []):
            pe = float(s.e[idx[0]] @ motif.centroid)
            pg = float((s.g[idx] @ motif.centroid).mean())
            frag = 1.0 - pg / pe if pe >= p.min_presence else None
            kept = stay.get((image_id, cond, strength))
            ok = kept is None or kept >= p.stay_threshold
            rows.append(
                {
                    "image_id": image_id,
                    "space": s.space,
                    "conditioning": cond,
                    "strength": strength,
                    "motif_cluster_id": motif.cluster_id,
                    "n_segments": n_seg,
                    "is_infrastructure": motif.is_infrastructure,
                    "is_rare_motif": motif.is_rare_motif,
                    "n_generations": len(idx),
                    "presence_exemplar": pe,
                    "presence_generated": pg,
                    "fragility_score": frag,
                    "stay_fraction": kept,
                    "is_fragile": bool(frag is not None and frag >= p.fragile_threshold and ok),
                }
            )
    return pa.Table.from_pylist(rows, schema=FRAGILE_SCHEMA)


# -- all of it -----------------------------------------------------------------------------------
def all_measures(catalog: Catalog, p: MeasuresParams) -> dict[str, pa.Table]:
    """Every measures table over every space present (see the module docstring)."""
    out: dict[str, list[pa.Table]] = {
        "": [STABILITY_SCHEMA.empty_table()],
        "clusters": [CLUSTERS_SCHEMA.empty_table()],
        "exemplars": [EXEMPLARS_SCHEMA.empty_table()],
        "holes": [HOLES_SCHEMA.empty_table()],
        "fragile": [FRAGILE_SCHEMA.empty_table()],
    }
    if "genprobe_outputs" not in catalog.views:
        return {k: v[0] for k, v in out.items()}
    outliers = flag_scores(catalog)
    for space in SPACES:
        s = load_space(catalog, space, p.level)
        if s is None:
            continue
        h = holes(s, p)
        stab, per_cluster = stability(s, h.column("is_hole").to_numpy(zero_copy_only=False), p)
        out[""].append(stab)
        out["clusters"].append(per_cluster)
        out["exemplars"].append(exemplar_table(s, stab, p, outliers))
        out["holes"].append(h)
        out["fragile"].append(fragile(s, stab, load_motifs(catalog, s), p))
    return {k: pa.concat_tables(v) for k, v in out.items()}


def rank_correlation(a: list[float | None], b: list[float | None]) -> float | None:
    """Spearman rank correlation of the pairs where both values exist (None below 3 pairs or
    when one side is constant)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    x, y = (np.asarray(v, np.float64) for v in zip(*pairs, strict=True))
    rx, ry = (
        np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64) for v in (x, y)
    )
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
