"""The captions family on the report (section ``captions``).

* the ``clip_score`` histogram of every caption with a score;
* per cluster (the largest clusters of the coarsest CLIP level, else DINO), its exemplar
  images with their caption (factual first, newest prompt version);
* the lowest-scoring captions, images and segment crops: the captions least like their own
  picture in CLIP space, likely hallucinations.

Captions of a random-weight model are said to be gibberish above the galleries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.histograms import Histogram, histograms
from exokiratory.core.tables import Tables
from exokiratory.engine.sections import (
    Gallery,
    SectionContext,
    Tile,
    grouped_tiles,
    plural,
    register_section,
)
from exokiratory.passes.captions.summary import RANDOM_WEIGHT_NOTE

TEXT_CHARS = 140

BEST_CAPTION_SQL = """
SELECT image_id, text, clip_score FROM captions
WHERE unit_kind = 'image' AND error IS NULL
QUALIFY row_number() OVER (PARTITION BY image_id
        ORDER BY caption_pass = 'factual' DESC, prompt_version DESC, caption_id) = 1
"""


def _text(r: Mapping[str, Any]) -> str:
    text = " ".join(str(r["text"] or "").split())
    text = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
    score = r.get("clip_score")
    return text + ("" if score is None else f" (clip {score:.2f})")


def cluster_caption_gallery(tables: Tables, n_clusters: int, per: int) -> Gallery | None:
    """Exemplar images of the largest clusters of the coarsest level, with their captions."""
    space = next((s for s in ("clip", "dino") if tables.nonempty(f"clusters_{s}")), None)
    if space is None:
        return None
    view = f"clusters_{space}"
    rows = tables.cat.query(
        f"""WITH lv AS (SELECT level FROM {view} GROUP BY level ORDER BY max(k), level LIMIT 1),
                 c AS (SELECT * FROM {view} WHERE level = (SELECT level FROM lv)),
                 s AS (SELECT cluster_id, count(*) AS size FROM c GROUP BY 1
                       ORDER BY size DESC, cluster_id LIMIT {int(n_clusters)}),
                 cap AS ({BEST_CAPTION_SQL})
            SELECT c.cluster_id, s.size, c.image_id, i.first_path, cap.text, cap.clip_score
            FROM c JOIN s USING (cluster_id) JOIN cap USING (image_id)
            JOIN images i USING (image_id)
            QUALIFY row_number() OVER (PARTITION BY c.cluster_id
                    ORDER BY c.is_exemplar DESC, c.similarity DESC, c.image_id) <= {int(per)}
            ORDER BY s.size DESC, c.cluster_id, c.similarity DESC"""
    ).to_pylist()
    if not rows:
        return None
    gal = Gallery(
        "captions-clusters",
        f"Captions of {space.upper()} cluster exemplars",
        "the largest clusters of the coarsest level; each exemplar with its caption",
    )
    gal.groups = grouped_tiles(
        rows,
        lambda r: f"cluster {r['cluster_id']} ({plural(int(r['size']))})",
        lambda r: Tile(r["image_id"], _text(r), str(r["first_path"] or ""), r["image_id"]),
    )
    return gal


def lowest_score_gallery(tables: Tables, n: int) -> Gallery | None:
    """The captions least like their picture (lowest ``clip_score``), images and segments."""
    rows = tables.cat.query(
        f"""SELECT c.unit_kind, c.unit_id, c.image_id, c.text, c.clip_score, i.first_path,
                   g.bbox, g.mask_width, g.mask_height
            FROM captions c JOIN images i USING (image_id)
            LEFT JOIN segments g ON g.segment_id = c.segment_id
            WHERE c.clip_score IS NOT NULL AND c.error IS NULL
            ORDER BY c.clip_score, c.unit_id LIMIT {int(n)}"""
    ).to_pylist()
    if not rows:
        return None
    out = []
    for r in rows:
        crop = None
        if r["unit_kind"] == "segment" and r["bbox"] is not None:
            x, y, w, h = (float(v) for v in r["bbox"])
            mw, mh = float(r["mask_width"] or 1), float(r["mask_height"] or 1)
            crop = [x / mw, y / mh, (x + w) / mw, (y + h) / mh]
        out.append(Tile(r["unit_id"], _text(r), str(r["first_path"] or ""), r["image_id"], crop))
    return Gallery(
        "captions-lowest",
        "Lowest-scoring captions",
        "the captions least like their own picture in CLIP space (likely hallucinations)",
        out,
    )


@dataclass
class Captions:
    note: str = ""
    hist: list[Histogram] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)


@register_section(
    "captions",
    title="Captions",
    nav="captions",
    order=75,
    template="captions.html.j2",
    needs=("captions*", "caption_selection", "caption_embeddings"),
)
def gather_captions(ctx: SectionContext) -> Captions | None:
    t = ctx.tables
    if not t.nonempty("captions"):
        return None
    p = ctx.params
    random = int(t.cat.scalar("SELECT count(*) FROM captions WHERE is_random_weights") or 0)
    n = int(t.cat.scalar("SELECT count(*) FROM captions WHERE error IS NULL") or 0)
    note = f"{plural(n, 'caption')}" + (f"; {random:,} by a {RANDOM_WEIGHT_NOTE}" if random else "")
    hist = histograms(
        t,
        "captions",
        ["clip_score"],
        "WHERE clip_score IS NOT NULL",
        p.histogram_bins,
        lambda c: [],
    )
    galleries = ctx.show(
        cluster_caption_gallery(t, p.exemplar_clusters, p.exemplars_per_cluster),
        lowest_score_gallery(t, p.gallery_size),
    )
    return Captions(note, hist, galleries)
