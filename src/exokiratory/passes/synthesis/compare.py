"""``structure-agreement``: image vs segment vs language, each comparison with its baseline.

Labelings (clusterings of the same units), read from the catalog when present:

==========================  ==========  ========================================================
name                        unit        source
==========================  ==========  ========================================================
``clusters_clip@L``         image       CLIP image-embedding clusters, level L (``clusters_clip``)
``clusters_dino@L``         image       DINOv2 image-embedding clusters, level L
``motif_bags_clip``         image       motif-bag clusters (``motif_bags.bag_cluster_id``)
``motif_bags_dino``         image       the same over DINOv2 motifs
``caption_clusters``        image       caption-embedding clusters (``caption_clusters``)
``motifs_clip``             segment     CLIP segment motifs (``motifs.cluster_id``)
``motifs_dino``             segment     DINOv2 segment motifs
==========================  ==========  ========================================================

Comparisons (``kind``), on the units both sides label:

* ``image_vs_segment``: ``clusters_<s>@L`` vs ``motif_bags_<s>`` (image semantics vs the
  segments' semantics collapsed upward), every level, s = clip, dino;
* ``language_vs_structure``: ``clusters_<s>@L`` vs ``caption_clusters``; the mapping table says
  which structural clusters language merges (``is_merged``) or splits (``is_split``);
* ``clip_vs_dino_image``: ``clusters_clip@L`` vs ``clusters_dino@L``;
* ``clip_vs_dino_segment``: ``motifs_clip`` vs ``motifs_dino`` (segments), and
  ``motif_bags_clip`` vs ``motif_bags_dino`` (images).

A comparison on fewer than ``min_units`` common units is not reported (noted). Statistics,
baselines, contingency and mapping: :mod:`.agreement`; ``is_above_baseline``: ``ari_z >=
baseline_z``. ``caption_terms``: c-TF-IDF terms per cluster of every image labeling
(:mod:`.terms`), with the clusters' mean ``clip_score``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.step import PassParams
from exokiratory.passes.synthesis.agreement import (
    Agreement,
    Contingency,
    Mapping,
    agreement_with_baseline,
    contingency,
    mapping,
)
from exokiratory.passes.synthesis.base import Notes, has_rows, random_weight_models
from exokiratory.passes.synthesis.schemas import (
    AGREEMENT_SCHEMA,
    CONTINGENCY_SCHEMA,
    MAPPING_SCHEMA,
    TERMS_SCHEMA,
)
from exokiratory.passes.synthesis.terms import class_tfidf, tokens

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
#: where each labeling's random-weight models are recorded
MODEL_VIEWS = {
    "clusters_clip": ("embeddings_clip",),
    "clusters_dino": ("embeddings_dino",),
    "motif_bags_clip": ("segment_embeddings_clip",),
    "motif_bags_dino": ("segment_embeddings_dino",),
    "motifs_clip": ("segment_embeddings_clip",),
    "motifs_dino": ("segment_embeddings_dino",),
    "caption_clusters": ("caption_embeddings",),
}
SEGMENT_KEY = 1 << 20  # segment unit key: image_idx * SEGMENT_KEY + mask_index


class AgreementParams(PassParams):
    n_shuffles: int = Field(10, ge=1, le=1000, description="label shuffles of each baseline")
    seed: int = 0
    min_units: int = Field(10, ge=2, description="fewer common units: the comparison is skipped")
    min_cluster_size: int = Field(5, ge=1, description="mapping: smaller left clusters left out")
    min_cell: int = Field(1, ge=1, description="contingency: smaller cells left out")
    split_fraction: float = Field(0.25, gt=0.0, le=0.5, description="mapping: is_split share")
    ami_max_clusters: int = Field(500, ge=2, description="AMI only up to this many clusters")
    baseline_z: float = Field(3.0, gt=0, description="is_above_baseline: ari_z at least this")
    top_terms: int = Field(10, ge=1, le=100, description="caption_terms per cluster")
    min_captions: int = Field(3, ge=1, description="caption_terms: clusters with fewer skipped")
    min_term_count: int = Field(2, ge=1, description="caption_terms: rarer terms skipped")


@dataclass(frozen=True)
class Labeling:
    name: str  # e.g. clusters_clip@0
    source: str  # e.g. clusters_clip
    level: int | None
    unit: str  # image | segment
    keys: np.ndarray  # sorted unique int64 unit keys
    labels: np.ndarray


def _labeling(name: str, source: str, level: int | None, unit: str, t: pa.Table) -> Labeling:
    keys = t.column("key").to_numpy().astype(np.int64)
    labels = t.column("label").to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return Labeling(name, source, level, unit, keys[order], labels[order])


def load_labelings(cat: Catalog, notes: Notes) -> dict[str, Labeling]:
    """Every labeling present (see the module docstring); absent ones noted."""
    out: dict[str, Labeling] = {}
    for s in SPACES:
        view = f"clusters_{s}"
        if has_rows(cat, view):
            t = cat.query(f'SELECT level, image_idx AS key, cluster_id AS label FROM "{view}"')
            level = t.column("level").to_numpy()
            for lv in np.unique(level):
                name = f"{view}@{int(lv)}"
                out[name] = _labeling(name, view, int(lv), "image", t.filter(pa.array(level == lv)))
        else:
            notes.skip(f"labels:{view}", f"no {view}: run embed-{s} then clusters-{s} first")
        if has_rows(cat, "motif_bags", f"WHERE space = '{s}' AND bag_cluster_id >= 0"):
            t = cat.query(
                "SELECT image_idx AS key, bag_cluster_id AS label FROM motif_bags "
                "WHERE space = ? AND bag_cluster_id >= 0",
                [s],
            )
            out[f"motif_bags_{s}"] = _labeling(
                f"motif_bags_{s}", f"motif_bags_{s}", None, "image", t
            )
        else:
            notes.skip(
                f"labels:motif_bags_{s}", f"no {s} motif bags: run motifs then motif-bags first"
            )
        if has_rows(cat, "motifs", f"WHERE space = '{s}'"):
            t = cat.query(
                f"SELECT image_idx * {SEGMENT_KEY} + mask_index AS key, cluster_id AS label "
                "FROM motifs WHERE space = ? AND cluster_id IS NOT NULL",
                [s],
            )
            out[f"motifs_{s}"] = _labeling(f"motifs_{s}", f"motifs_{s}", None, "segment", t)
    if has_rows(cat, "caption_clusters"):
        t = cat.query("SELECT image_idx AS key, cluster_id AS label FROM caption_clusters")
        out["caption_clusters"] = _labeling(
            "caption_clusters", "caption_clusters", None, "image", t
        )
    else:
        notes.skip(
            "labels:caption_clusters",
            "no caption clusters: run caption then caption-clusters first",
        )
    return out


def comparisons(labelings: dict[str, Labeling]) -> list[tuple[str, str, str]]:
    """(kind, left, right) of every comparison whose two labelings exist, in a fixed order."""
    out: list[tuple[str, str, str]] = []
    levels = sorted({lb.level for lb in labelings.values() if lb.level is not None})
    for s in SPACES:
        for lv in levels:
            out.append(("image_vs_segment", f"clusters_{s}@{lv}", f"motif_bags_{s}"))
    for s in SPACES:
        for lv in levels:
            out.append(("language_vs_structure", f"clusters_{s}@{lv}", "caption_clusters"))
    for lv in levels:
        out.append(("clip_vs_dino_image", f"clusters_clip@{lv}", f"clusters_dino@{lv}"))
    out.append(("clip_vs_dino_segment", "motifs_clip", "motifs_dino"))
    out.append(("clip_vs_dino_segment", "motif_bags_clip", "motif_bags_dino"))
    return [c for c in out if c[1] in labelings and c[2] in labelings]


@dataclass
class Outputs:
    agreement: list[dict[str, Any]]
    contingency: list[pa.Table]
    mapping: list[pa.Table]


def compare(
    cat: Catalog, params: AgreementParams, notes: Notes
) -> tuple[pa.Table, pa.Table, pa.Table, dict[str, Labeling]]:
    """(structure_agreement, structure_contingency, structure_mapping, the labelings)."""
    labelings = load_labelings(cat, notes)
    tiny = {src: random_weight_models(cat, views) for src, views in MODEL_VIEWS.items()}
    out = Outputs([], [CONTINGENCY_SCHEMA.empty_table()], [MAPPING_SCHEMA.empty_table()])
    for kind, ln, rn in comparisons(labelings):
        left, right = labelings[ln], labelings[rn]
        common, li, ri = np.intersect1d(
            left.keys, right.keys, assume_unique=True, return_indices=True
        )
        cid = f"{kind}:{ln}~{rn}"
        if len(common) < params.min_units:
            notes.skip(
                cid, f"{len(common)} common units (< min_units {params.min_units})", len(common)
            )
            continue
        a, b = left.labels[li], right.labels[ri]
        _one(out, cid, kind, left, right, a, b, params, tiny)
        notes.ok(cid, len(common))
    agreement = pa.Table.from_pylist(out.agreement, schema=AGREEMENT_SCHEMA)
    return agreement, pa.concat_tables(out.contingency), pa.concat_tables(out.mapping), labelings


def _one(
    out: Outputs,
    cid: str,
    kind: str,
    left: Labeling,
    right: Labeling,
    a: np.ndarray,
    b: np.ndarray,
    params: AgreementParams,
    tiny: dict[str, list[str]],
) -> None:
    """One comparison: its agreement row, contingency cells and cluster mapping."""
    ag = agreement_with_baseline(
        a,
        b,
        n_shuffles=params.n_shuffles,
        seed=params.seed,
        ami_max_clusters=params.ami_max_clusters,
    )
    cells = contingency(a, b)
    mp = mapping(
        cells, split_fraction=params.split_fraction, min_cluster_size=params.min_cluster_size
    )
    models = sorted(set(tiny.get(left.source, [])) | set(tiny.get(right.source, [])))
    out.agreement.append(_agreement_row(cid, kind, left, right, ag, mp, params, models))
    out.contingency.append(_contingency_table(cid, kind, cells, params))
    out.mapping.append(_mapping_table(cid, kind, mp))


def _agreement_row(
    cid: str,
    kind: str,
    left: Labeling,
    right: Labeling,
    ag: Agreement,
    mp: Mapping,
    params: AgreementParams,
    models: list[str],
) -> dict[str, Any]:
    z = (ag.ari - ag.ari_baseline) / max(ag.ari_baseline_std, 1e-6)
    return {
        "comparison_id": cid,
        "kind": kind,
        "unit": left.unit,
        "left_clustering": left.source,
        "left_level": left.level,
        "right_clustering": right.source,
        "right_level": right.level,
        "n": ag.n,
        "k_left": ag.k_left,
        "k_right": ag.k_right,
        "ari": ag.ari,
        "ari_baseline": ag.ari_baseline,
        "ari_baseline_std": ag.ari_baseline_std,
        "ari_z": z,
        "ami": ag.ami,
        "ami_baseline": ag.ami_baseline,
        "ami_baseline_std": ag.ami_baseline_std,
        "n_shuffles": params.n_shuffles,
        "n_split": int(mp.is_split.sum()),
        "n_merged": int(mp.is_merged.sum()),
        "is_above_baseline": bool(z >= params.baseline_z),
        "random_weight_models": ", ".join(models) or None,
    }


def _contingency_table(
    cid: str, kind: str, cells: Contingency, params: AgreementParams
) -> pa.Table:
    """The cells of at least ``min_cell`` units between clusters of ``min_cluster_size``."""
    keep = (
        (cells.n >= params.min_cell)
        & (cells.left_size >= params.min_cluster_size)
        & (cells.right_size >= params.min_cluster_size)
    )
    n = int(keep.sum())
    return pa.table(
        {
            "comparison_id": [cid] * n,
            "kind": [kind] * n,
            "left_cluster": cells.left[keep].astype(np.int32),
            "right_cluster": cells.right[keep].astype(np.int32),
            "n": cells.n[keep],
            "left_size": cells.left_size[keep],
            "right_size": cells.right_size[keep],
            "left_fraction": (cells.n[keep] / cells.left_size[keep]).astype(np.float32),
            "right_fraction": (cells.n[keep] / cells.right_size[keep]).astype(np.float32),
        },
        schema=CONTINGENCY_SCHEMA,
    )


def _mapping_table(cid: str, kind: str, mp: Mapping) -> pa.Table:
    m = len(mp.left)
    return pa.table(
        {
            "comparison_id": [cid] * m,
            "kind": [kind] * m,
            "left_cluster": mp.left.astype(np.int32),
            "left_size": mp.left_size,
            "best_right_cluster": mp.best_right.astype(np.int32),
            "best_fraction": mp.best_fraction.astype(np.float32),
            "n_major": mp.n_major.astype(np.int32),
            "is_split": mp.is_split,
            "is_merged": mp.is_merged,
        },
        schema=MAPPING_SCHEMA,
    )


# -- caption terms ---------------------------------------------------------------------------
CAPTIONS_SQL = """
SELECT image_idx, text, clip_score FROM captions
WHERE error IS NULL AND text IS NOT NULL ORDER BY image_idx, caption_id
"""


def caption_terms(
    cat: Catalog, labelings: dict[str, Labeling], params: AgreementParams, notes: Notes
) -> pa.Table:
    """Distinctive caption terms per cluster of every image labeling."""
    if not has_rows(cat, "captions", "WHERE error IS NULL AND text IS NOT NULL"):
        notes.skip("caption_terms", "no captions: run caption first (exokiratory run caption)")
        return TERMS_SCHEMA.empty_table()
    t = cat.query(CAPTIONS_SQL)
    idx = t.column("image_idx").to_numpy().astype(np.int64)
    words = [tokens(x or "") for x in t.column("text").to_pylist()]
    score = t.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64)
    rows: list[dict[str, Any]] = []
    for name, lb in labelings.items():
        if lb.unit != "image":
            continue
        pos = np.clip(np.searchsorted(lb.keys, idx), 0, max(len(lb.keys) - 1, 0))
        hit = lb.keys[pos] == idx if len(lb.keys) else np.zeros(len(idx), bool)
        cl = lb.labels[pos[hit]]
        sizes = dict(zip(*np.unique(lb.labels, return_counts=True), strict=True))
        found = class_tfidf(
            cl.tolist(),
            [words[i] for i in np.flatnonzero(hit)],
            min_captions=params.min_captions,
            min_term_count=params.min_term_count,
            top_terms=params.top_terms,
        )
        n_cap = dict(zip(*np.unique(cl, return_counts=True), strict=True))
        sc = score[hit]
        for term in found:
            in_c = (cl == term.cluster) & np.isfinite(sc)
            rows.append(
                {
                    "clustering": lb.source,
                    "level": lb.level,
                    "cluster_id": term.cluster,
                    "n_images": int(sizes.get(term.cluster, 0)),
                    "n_captions": int(n_cap.get(term.cluster, 0)),
                    "mean_clip_score": float(sc[in_c].mean()) if in_c.any() else None,
                    "rank": term.rank,
                    "term": term.term,
                    "term_count": term.count,
                    "score": term.score,
                }
            )
        log.debug("caption_terms: %s: %d terms", name, len(found))
    notes.ok("caption_terms", len(rows), f"{t.num_rows} captions")
    return pa.Table.from_pylist(rows, schema=TERMS_SCHEMA)
