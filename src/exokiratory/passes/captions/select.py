"""Which units (images and segments) are worth a caption, and in which order: the definitions
behind the ``caption-select`` derivation (:mod:`exokiratory.passes.captions.step`).

Every rule reads stored structure only (never pixels) and gives a unit one *reason* with a
weight; a unit's ``priority_score`` is the sum of the weights of its reasons, and its
``priority`` is its rank (1 = caption first) by ``priority_score`` descending, then images before
segments, then ``image_idx``, ``mask_index`` and ``unit_id`` (a total, deterministic order).
The budget keeps the first ``min(max_units, ceil(fraction x units))`` ranks (``units``: readable
images plus segments); raising it later extends the selection without touching captions
already made.

Rules and their reasons (``<space>``: clip or dino, ``L<level>``: cluster level, 0 = finest):

* ``centroid:<space>:L<level>``: the image closest to its cluster's centroid (highest cosine
  ``similarity`` in ``clusters_<space>``), one per cluster and level (weight ``weight_centroid``);
* ``exemplar:<space>:L<level>``: an exemplar of its cluster (``is_exemplar``: the clustering's
  ``exemplars`` closest images; the centroid image is one of them) (``weight_exemplar``);
* ``spread:<space>:L<level>``: ``spread_per_cluster`` members at evenly spaced ranks of
  similarity (for ``s`` picks in a cluster of ``n``: the 0-based ranks ``floor((j + 1) n /
  (s + 1))``, j = 0..s-1), from typical to peripheral (``weight_spread``). Cluster weights are
  multiplied by ``1 + level_bonus x level``: a coarser cluster stands for more images;
* ``motif_outlier:<space>``: a segment with ``is_outlier`` in ``motifs`` (``weight_motif_outlier``);
* ``rare_motif:<space>``: one of the ``rare_per_motif`` segments closest to the centroid of a
  rare motif (``is_rare_motif``) (``weight_rare_motif``);
* ``high_entropy``: a segment among the top ``high_entropy_fraction`` of
  ``segment_entropy_score`` (below) over every segment with statistics (at least one when the
  fraction is > 0) (``weight_high_entropy``);
* ``user``: a unit matched by ``user_where``, a SQL predicate over the relation ``candidates``
  (columns ``unit_kind``, ``unit_id``, ``image_id``, ``image_idx``, ``segment_id``,
  ``mask_index``, ``path``: every readable image and every segment), e.g.
  ``path LIKE '%/favourites/%'`` or ``image_id IN (SELECT image_id FROM flags WHERE
  is_text_heavy)`` (``weight_user``, 100 by default: user picks come first).

``segment_entropy_score`` (in [0, 1], from ``segment_stats``, PASS 4): the mean of the colour
entropy (Shannon entropy, in bits, of the L*, a* and b* 16-bin histograms, summed, over their
maximum 3 x 4 bits) and the texture entropy (entropy of the 10-bin uniform-LBP histogram over
log2 10 bits). A flat sky scores near 0; a busy, many-coloured, textured region near 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from exokiratory.engine.step import PassParams, Spaces

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog


class CaptionSelectParams(PassParams):
    spaces: Spaces = Field(("clip", "dino"), description="cluster/motif spaces to use")
    spread_per_cluster: int = Field(2, ge=0, le=100)
    rare_per_motif: int = Field(3, ge=0, le=1000)
    high_entropy_fraction: float = Field(0.05, ge=0.0, le=1.0)
    user_where: str | None = Field(None, description="SQL predicate over `candidates`")
    max_units: int | None = Field(2000, ge=0, description="budget: units selected at most")
    fraction: float | None = Field(None, gt=0.0, le=1.0, description="budget: share of units")
    weight_centroid: float = Field(3.0, ge=0.0)
    weight_exemplar: float = Field(2.0, ge=0.0)
    weight_spread: float = Field(1.0, ge=0.0)
    weight_motif_outlier: float = Field(2.0, ge=0.0)
    weight_rare_motif: float = Field(1.5, ge=0.0)
    weight_high_entropy: float = Field(1.0, ge=0.0)
    weight_user: float = Field(100.0, ge=0.0)
    level_bonus: float = Field(0.5, ge=0.0)

    @field_validator("user_where")
    @classmethod
    def _one_predicate(cls, v: str | None) -> str | None:
        if v is not None and (";" in v or not v.strip()):
            raise ValueError("user_where must be one SQL predicate (no ';')")
        return v

    @property
    def digest(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


SELECTION_SCHEMA = pa.schema(
    [
        pa.field("unit_kind", pa.string(), nullable=False),
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("segment_id", pa.string()),
        pa.field("mask_index", pa.int32()),
        pa.field("reasons", pa.list_(pa.string())),
        pa.field("priority", pa.int64()),
        pa.field("priority_score", pa.float32()),
        pa.field("selection_version", pa.string()),
    ]
)
"""One row per selected unit (view ``caption_selection``), in ``priority`` order."""

REASON_SCHEMA = pa.schema(
    [
        pa.field("unit_kind", pa.string()),
        pa.field("unit_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("image_idx", pa.int64()),
        pa.field("segment_id", pa.string()),
        pa.field("mask_index", pa.int32()),
        pa.field("reason", pa.string()),
        pa.field("weight", pa.float64()),
    ]
)

_IMAGE_COLS = (
    "'image' AS unit_kind, image_id AS unit_id, image_id, image_idx, "
    "NULL::VARCHAR AS segment_id, NULL::INTEGER AS mask_index"
)
_SEGMENT_COLS = (
    "'segment' AS unit_kind, segment_id AS unit_id, image_id, image_idx, "
    "segment_id, mask_index::INTEGER AS mask_index"
)

CLUSTER_REASONS_SQL = """
WITH ranked AS (
  SELECT *, row_number() OVER w - 1 AS r, count(*) OVER (PARTITION BY level, cluster_id) AS n
  FROM "{view}"
  WINDOW w AS (PARTITION BY level, cluster_id ORDER BY similarity DESC, image_idx))
SELECT {cols}, reason, weight * (1 + {bonus} * level) AS weight FROM (
  SELECT *, 'centroid:{space}:L' || level AS reason, {w_centroid} AS weight FROM ranked WHERE r = 0
  UNION ALL
  SELECT *, 'exemplar:{space}:L' || level, {w_exemplar} FROM ranked WHERE is_exemplar
  UNION ALL
  SELECT DISTINCT ranked.*, 'spread:{space}:L' || level, {w_spread} FROM ranked, range({spread}) t(j)
  WHERE r = CAST(floor((j + 1) * n / ({spread} + 1)) AS BIGINT))
"""

MOTIF_REASONS_SQL = """
SELECT {cols}, 'motif_outlier:' || space AS reason, {w_outlier} AS weight
FROM motifs WHERE space = '{space}' AND is_outlier
UNION ALL
SELECT {cols}, 'rare_motif:' || space, {w_rare} FROM (
  SELECT *, row_number() OVER (PARTITION BY cluster_id ORDER BY similarity DESC, image_idx,
                               mask_index) AS r
  FROM motifs WHERE space = '{space}' AND is_rare_motif) WHERE r <= {per_motif}
"""

CANDIDATES_SQL = f"""
SELECT {_IMAGE_COLS}, first_path AS path FROM images WHERE status = 'ok'
UNION ALL
SELECT 'segment', s.segment_id, s.image_id, s.image_idx, s.segment_id, s.mask_index::INTEGER,
       i.first_path
FROM segments s JOIN images i USING (image_id)
"""
"""Every unit a user predicate may pick (``candidates`` in ``user_where``)."""


def cluster_reasons(catalog: Catalog, p: CaptionSelectParams) -> list[pa.Table]:
    out = []
    for space in p.spaces:
        view = f"clusters_{space}"
        if view not in catalog.views:
            continue
        sql = CLUSTER_REASONS_SQL.format(
            view=view,
            cols=_IMAGE_COLS,
            space=space,
            bonus=p.level_bonus,
            w_centroid=p.weight_centroid,
            w_exemplar=p.weight_exemplar,
            w_spread=p.weight_spread,
            spread=p.spread_per_cluster,
        )
        out.append(catalog.query(sql))
    return out


def motif_reasons(catalog: Catalog, p: CaptionSelectParams) -> list[pa.Table]:
    if "motifs" not in catalog.views:
        return []
    return [
        catalog.query(
            MOTIF_REASONS_SQL.format(
                cols=_SEGMENT_COLS,
                space=space,
                w_outlier=p.weight_motif_outlier,
                w_rare=p.weight_rare_motif,
                per_motif=p.rare_per_motif,
            )
        )
        for space in p.spaces
    ]


def entropy_bits(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row of a (normalised) histogram matrix."""
    h = np.clip(hist.astype(np.float64), 0.0, None)
    h = h / np.maximum(h.sum(axis=1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(h > 0, -h * np.log2(h), 0.0)
    out: np.ndarray = terms.sum(axis=1)
    return out


def segment_entropy_score(lab_hist: np.ndarray, lbp_hist: np.ndarray) -> np.ndarray:
    """``segment_entropy_score`` (module docstring) of ``(n, 48)`` Lab and ``(n, 10)`` LBP
    histograms."""
    bins = lab_hist.shape[1] // 3
    colour = sum(entropy_bits(lab_hist[:, c * bins : (c + 1) * bins]) for c in range(3))
    colour_score = np.asarray(colour) / (3 * math.log2(bins))
    texture_score = entropy_bits(lbp_hist) / math.log2(lbp_hist.shape[1])
    out: np.ndarray = (0.5 * colour_score + 0.5 * texture_score).astype(np.float32)
    return out


def entropy_reasons(catalog: Catalog, p: CaptionSelectParams) -> list[pa.Table]:
    if "segment_stats" not in catalog.views or p.high_entropy_fraction <= 0:
        return []
    t = catalog.query(
        f"SELECT {_SEGMENT_COLS}, lab_hist, lbp_hist FROM segment_stats "
        "WHERE error IS NULL AND lab_hist IS NOT NULL ORDER BY image_idx, mask_index"
    )
    if t.num_rows == 0:
        return []
    score = segment_entropy_score(
        np.asarray(t.column("lab_hist").to_pylist(), np.float64),
        np.asarray(t.column("lbp_hist").to_pylist(), np.float64),
    )
    n_top = max(1, math.ceil(p.high_entropy_fraction * t.num_rows))
    order = np.lexsort((np.arange(t.num_rows), -score))[:n_top]  # stable: ties by unit order
    top = t.drop_columns(["lab_hist", "lbp_hist"]).take(pa.array(np.sort(order)))
    n = top.num_rows
    return [
        top.append_column("reason", pa.array(["high_entropy"] * n)).append_column(
            "weight", pa.array([p.weight_high_entropy] * n, pa.float64())
        )
    ]


def user_reasons(catalog: Catalog, p: CaptionSelectParams) -> list[pa.Table]:
    if p.user_where is None:
        return []
    seg = "segments" in catalog.views
    candidates = CANDIDATES_SQL if seg else CANDIDATES_SQL.split("UNION ALL")[0]
    sql = (
        f"SELECT unit_kind, unit_id, image_id, image_idx, segment_id, mask_index, 'user' AS "
        f"reason, {p.weight_user} AS weight FROM ({candidates}) candidates WHERE ({p.user_where})"
    )
    try:
        return [catalog.query(sql)]
    except Exception as exc:
        raise RuntimeError(
            f"passes.caption-select.user_where: {type(exc).__name__}: {exc}"
        ) from exc


def budget(p: CaptionSelectParams, n_units: int) -> int:
    """How many units the selection keeps (``n_units``: readable images plus segments)."""
    limits = [n_units]
    if p.max_units is not None:
        limits.append(p.max_units)
    if p.fraction is not None:
        limits.append(math.ceil(p.fraction * n_units))
    return max(0, min(limits))


RANK_SQL = """
SELECT unit_kind, unit_id, any_value(image_id) AS image_id, any_value(image_idx) AS image_idx,
       any_value(segment_id) AS segment_id, any_value(mask_index) AS mask_index,
       list_sort(list_distinct(list(reason))) AS reasons, round(sum(weight), 6) AS score
FROM reasons GROUP BY unit_kind, unit_id
ORDER BY score DESC, unit_kind = 'segment', image_idx, mask_index NULLS FIRST, unit_id
"""


def rank_units(reasons: pa.Table, keep: int, version: str) -> pa.Table:
    """Aggregate reasons per unit, order by priority and keep the first ``keep``."""
    import duckdb

    from exokiratory.core.catalog import fetch_arrow

    con = duckdb.connect()
    try:
        con.register("reasons", reasons.cast(REASON_SCHEMA))
        ranked = fetch_arrow(con.execute(RANK_SQL + f" LIMIT {int(keep)}"))
    finally:
        con.close()
    n = ranked.num_rows
    return pa.table(
        {
            **{c: ranked.column(c) for c in ("unit_kind", "unit_id", "image_id", "image_idx")},
            "segment_id": ranked.column("segment_id"),
            "mask_index": ranked.column("mask_index"),
            "reasons": ranked.column("reasons"),
            "priority": pa.array(range(1, n + 1), pa.int64()),
            "priority_score": ranked.column("score").cast(pa.float32()),
            "selection_version": pa.array([version] * n, pa.string()),
        }
    ).cast(SELECTION_SCHEMA)


def select_units(catalog: Catalog, p: CaptionSelectParams, version: str) -> pa.Table:
    """The ``caption_selection`` table (see the module docstring)."""
    tables = [
        t.cast(REASON_SCHEMA)
        for rule in (cluster_reasons, motif_reasons, entropy_reasons, user_reasons)
        for t in rule(catalog, p)
    ]
    if not tables:
        return SELECTION_SCHEMA.empty_table()
    n_images = int(catalog.scalar("SELECT count(*) FROM images WHERE status = 'ok'") or 0)
    n_segments = (
        int(catalog.scalar("SELECT count(*) FROM segments") or 0)
        if "segments" in catalog.views
        else 0
    )
    keep = budget(p, n_images + n_segments)
    return rank_units(pa.concat_tables(tables), keep, f"{version}+{p.digest}")
