"""Which images each gallery shows: chosen in SQL (top-N, grouped top-N, seeded samples).

Galleries: the worst offenders of every flag (ordered by how far their score is past the cut),
near-duplicate groups with their canonical first, outliers (cheap features, and the images least
like their cluster in each embedding space), seeded random samples per stratum (modality when a
pass wrote one, else the routing strata), cluster exemplar sheets and, for segments, motif sheets.
Every query is a ``LIMIT`` or a per-group ``row_number()`` over the views, so a gallery costs one
scan of its table at any scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from exokiratory.report.overview import DESCRIPTIVE_FLAGS, flag_columns, modality_sql
from exokiratory.report.tables import Tables, qi
from exokiratory.report.thumbs import WANTS_SCHEMA


@dataclass
class Tile:
    thumb_id: str
    caption: str
    title: str = ""
    image_id: str = ""
    crop: list[float] | None = None
    badge: str = ""


@dataclass
class Gallery:
    key: str
    title: str
    note: str = ""
    tiles: list[Tile] = field(default_factory=list)
    groups: list[tuple[str, list[Tile]]] = field(default_factory=list)

    def all_tiles(self) -> list[Tile]:
        return [*self.tiles, *(t for _, g in self.groups for t in g)]


#: flag -> (SQL severity expression over ``flags``, note). Higher severity first.
FLAG_SEVERITY: dict[str, tuple[str, str]] = {
    "is_dark": ("-f.dark_score", "darkest first (brightness p99)"),
    "is_light": ("-f.light_score", "lightest first (1 - brightness p05)"),
    "is_blurry": ("f.blurry_score", "blurriest first"),
    "is_low_information": ("-f.low_information_score", "lowest entropy first"),
    "is_grayscale": ("-f.grayscale_score", "least chroma first"),
    "is_odd_aspect_ratio": ("-f.aspect_ratio_score", "most elongated first"),
    "is_odd_size": (
        "abs(ln(greatest(f.size_score, 1e-9)) - (SELECT median(ln(size_score)) FROM flags "
        "WHERE size_score > 0))",
        "furthest from the typical size first",
    ),
    "is_tiny": ("-f.size_score", "smallest first"),
    "is_text_heavy": ("f.text_heavy_score", "most text-like first"),
    "is_outlier": ("f.outlier_score", "largest robust z-score first"),
    "is_near_duplicate": ("-f.hash_distance_to_canonical", "closest copies first"),
    "is_semantic_duplicate": (
        "f.semantic_similarity_to_canonical",
        "most similar to their canonical first",
    ),
    "is_embedding_outlier": ("f.embedding_outlier_score", "largest k-NN distance z-score first"),
    "is_junk": ("-f.low_information_score", "emptiest first"),
    "is_corrupt": ("-f.image_idx", "cannot be shown: reasons in the captions"),
}

#: Flags without an offender gallery (routing decisions, canonical markers, content labels).
NOT_OFFENDERS = {"is_worth_gpu", "is_dup_canonical", "is_semantic_dup_canonical"}

STRATUM_SQL = """CASE WHEN f.is_corrupt THEN 'corrupt' WHEN f.is_junk THEN 'junk'
  WHEN f.is_near_duplicate THEN 'near duplicate' WHEN f.is_text_heavy THEN 'text-heavy'
  WHEN f.is_grayscale THEN 'grayscale' WHEN f.is_outlier THEN 'outlier' ELSE 'other' END"""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _seeded(seed: int, col: str = "image_id") -> str:
    return f"md5({col} || ':{int(seed)}')"


def _tiles(rows: list[dict[str, Any]], caption: str) -> list[Tile]:
    out = []
    for r in rows:
        cap = caption.format(**{k: _fmt(v) for k, v in r.items()})
        out.append(
            Tile(r["image_id"], cap, title=str(r.get("first_path") or ""), image_id=r["image_id"])
        )
    return out


def offender_galleries(tables: Tables, n: int) -> tuple[list[Gallery], list[str]]:
    """(one gallery per flag that flags any image, the flags that flag none)."""
    t = tables.get("flags")
    if t is None or not t.rows:
        return [], []
    out, empty = [], []
    for flag in flag_columns(tables):
        if flag in NOT_OFFENDERS or flag in DESCRIPTIVE_FLAGS:
            continue
        total = tables.n_true("flags", flag)
        if not total:
            empty.append(flag)
            continue
        score = flag.removeprefix("is_") + "_score"
        sev, note = FLAG_SEVERITY.get(
            flag,
            (f"f.{qi(score)}", f"highest {score} first")
            if score in t.columns
            else ("-f.image_idx", "in registration order"),
        )
        cap_col = score if score in t.columns else None
        if flag == "is_corrupt":
            cap_col = "corrupt_reason"
        cap = f"{{{cap_col}}}" if cap_col else ""
        sel = f", f.{qi(cap_col)}" if cap_col else ""
        rows = tables.cat.query(
            f"""SELECT f.image_id, i.first_path{sel} FROM flags f JOIN images i USING (image_id)
                WHERE f.{qi(flag)} ORDER BY {sev} DESC NULLS LAST, f.image_idx LIMIT {int(n)}"""
        ).to_pylist()
        out.append(Gallery(f"flag-{flag}", flag, f"{_n(total)}; {note}", _tiles(rows, cap)))
    return out, empty


def label_gallery(tables: Tables, per: int) -> Gallery | None:
    """The most confident images of each content label (``is_photo``, ``is_human_present``...),
    by the label's score where one is stored."""
    t = tables.get("flags")
    if t is None or not t.rows:
        return None
    gal = Gallery("labels", "content labels", "images carrying each label, highest score first")
    for flag in flag_columns(tables):
        if flag not in DESCRIPTIVE_FLAGS:
            continue
        score = flag.removeprefix("is_") + "_score"
        order = f"f.{qi(score)} DESC NULLS LAST, " if score in t.columns else ""
        rows = tables.cat.query(
            f"""SELECT f.image_id, i.first_path FROM flags f JOIN images i USING (image_id)
                WHERE f.{qi(flag)} ORDER BY {order}f.image_idx LIMIT {int(per)}"""
        ).to_pylist()
        total = tables.n_true("flags", flag)
        gal.groups.append((f"{flag} ({_n(total)})", _tiles(rows, "")))
    return gal if gal.groups else None


def _n(count: int, what: str = "image") -> str:
    return f"{count:,} {what}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class GroupColumns:
    """How a kind of duplicate group is stored in ``flags``."""

    key: str
    title: str
    group: str
    size: str
    canonical: str
    distance: str
    closest_first: str  # "ASC" for distances, "DESC" for similarities
    what: str


DUPLICATE_KINDS = (
    GroupColumns(
        "near-duplicates",
        "near-duplicate groups",
        "dup_group_id",
        "dup_group_size",
        "is_dup_canonical",
        "hash_distance_to_canonical",
        "ASC",
        "hash distance",
    ),
    GroupColumns(
        "semantic-duplicates",
        "semantic-duplicate groups",
        "semantic_dup_group_id",
        "semantic_dup_group_size",
        "is_semantic_dup_canonical",
        "semantic_similarity_to_canonical",
        "DESC",
        "similarity",
    ),
)


def duplicate_galleries(tables: Tables, n_groups: int, per_group: int = 8) -> list[Gallery]:
    """The largest duplicate groups of each kind, canonical first, side by side."""
    out = []
    for kind in DUPLICATE_KINDS:
        g = _duplicate_gallery(tables, kind, n_groups, per_group)
        if g is not None:
            out.append(g)
    return out


def _duplicate_gallery(
    tables: Tables, c: GroupColumns, n_groups: int, per_group: int
) -> Gallery | None:
    if not tables.has("flags", c.group, c.size, c.canonical, c.distance) or n_groups <= 0:
        return None
    grp, can, dist = qi(c.group), qi(c.canonical), qi(c.distance)
    order = f"f.{can} DESC NULLS LAST, d {c.closest_first} NULLS FIRST, f.image_idx"
    rows = tables.cat.query(
        f"""WITH g AS (SELECT {grp} AS gid, max({qi(c.size)}) AS size FROM flags
                       WHERE {grp} IS NOT NULL GROUP BY 1
                       ORDER BY size DESC, gid LIMIT {int(n_groups)})
            SELECT f.image_id, g.gid, g.size, f.{can} AS is_canonical, f.{dist} AS d,
                   i.first_path
            FROM flags f JOIN g ON f.{grp} = g.gid JOIN images i USING (image_id)
            QUALIFY row_number() OVER (PARTITION BY g.gid ORDER BY {order}) <= {per_group}
            ORDER BY g.size DESC, g.gid, {order}"""
    ).to_pylist()
    if not rows:
        return None
    total = int(
        tables.cat.scalar(f"SELECT count(DISTINCT {grp}) FROM flags WHERE {grp} IS NOT NULL") or 0
    )
    gal = Gallery(
        c.key,
        c.title,
        f"{total} groups; the largest, canonical first (kept for GPU passes), then its copies "
        f"by {c.what}",
    )
    groups: dict[str, list[Tile]] = {}
    sizes: dict[str, int] = {}
    for r in rows:
        gid = str(r["gid"])
        sizes[gid] = int(r["size"])
        cap = "canonical" if r["is_canonical"] else f"{c.what} {_fmt(r['d'])}"
        tile = Tile(r["image_id"], cap, str(r["first_path"] or ""), r["image_id"])
        tile.badge = "canonical" if r["is_canonical"] else ""
        groups.setdefault(gid, []).append(tile)
    gal.groups = [(f"group of {_n(sizes[g])} ({g[:8]})", tiles) for g, tiles in groups.items()]
    return gal


def cluster_levels(tables: Tables, space: str) -> list[tuple[int, int]]:
    """(level, k) of the clusterings of a space, coarsest first (queried once per build)."""
    return tables.memo(f"cluster_levels:{space}", lambda: _cluster_levels(tables, space))


def _cluster_levels(tables: Tables, space: str) -> list[tuple[int, int]]:
    view = f"clusters_{space}"
    if not tables.has(view, "image_id", "cluster_id") or not tables.nonempty(view):
        return []
    if not tables.has(view, "level"):
        k = int(tables.cat.scalar(f"SELECT count(DISTINCT cluster_id) FROM {view}") or 0)
        return [(0, k)]
    kcol = "k" if tables.has(view, "k") else "count(DISTINCT cluster_id)"
    agg = "max(k)" if kcol == "k" else kcol
    return [
        (int(level), int(k))
        for level, k in tables.cat.rows(f"SELECT level, {agg} FROM {view} GROUP BY 1 ORDER BY 2")
    ]


def outlier_galleries(tables: Tables, n: int) -> list[Gallery]:
    out = []
    for space in ("clip", "dino"):
        view = f"clusters_{space}"
        levels = cluster_levels(tables, space)
        if not levels or not tables.has(view, "similarity"):
            continue
        level = levels[-1][0]
        where = f"WHERE c.level = {level}" if tables.has(view, "level") else ""
        rows = tables.cat.query(
            f"""SELECT c.image_id, c.cluster_id, c.similarity, i.first_path
                FROM {view} c JOIN images i USING (image_id) {where}
                ORDER BY c.similarity ASC NULLS LAST, c.image_id LIMIT {int(n)}"""
        ).to_pylist()
        out.append(
            Gallery(
                f"outliers-{space}",
                f"{space.upper()} outliers",
                f"lowest cosine similarity to their own cluster centroid (finest level, "
                f"k={levels[-1][1]})",
                _tiles(rows, "sim {similarity} · c{cluster_id}"),
            )
        )
    return out


def stratum_expression(tables: Tables) -> tuple[str, str, str] | None:
    """(FROM clause with alias f, stratum SQL expression, description) or None."""
    src = modality_sql(tables)
    if src is not None:
        return f"({src[0]}) f", "coalesce(f.label, '(none)')", src[1]
    if tables.has("flags", "is_junk", "is_text_heavy", "is_grayscale", "is_outlier"):
        return "flags f", STRATUM_SQL, "routing strata from the flags"
    return None


def strata_gallery(tables: Tables, per: int, seed: int) -> Gallery | None:
    s = stratum_expression(tables)
    if s is None:
        return None
    src, expr, desc = s
    rows = tables.cat.query(
        f"""SELECT f.image_id, {expr} AS stratum, i.first_path
            FROM {src} JOIN images i USING (image_id) WHERE i.status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY stratum ORDER BY {_seeded(seed, "f.image_id")})
                    <= {int(per)}
            ORDER BY stratum, {_seeded(seed, "f.image_id")}"""
    ).to_pylist()
    counts = dict(
        tables.cat.rows(
            f"SELECT {expr} AS stratum, count(*) FROM {src} JOIN images i USING (image_id) "
            "WHERE i.status = 'ok' GROUP BY 1"
        )
    )
    gal = Gallery("strata", "random samples per stratum", f"strata: {desc}; seeded sample")
    groups: dict[str, list[Tile]] = {}
    for r in rows:
        groups.setdefault(str(r["stratum"]), []).append(
            Tile(r["image_id"], "", str(r["first_path"] or ""), r["image_id"])
        )
    gal.groups = [(f"{k} ({_n(int(counts.get(k, 0)))})", v) for k, v in groups.items()]
    return gal


def exemplar_galleries(tables: Tables, n_clusters: int, per: int) -> list[Gallery]:
    out = []
    for space in ("clip", "dino"):
        levels = cluster_levels(tables, space)
        if not levels:
            continue
        level, k = levels[0]
        view = f"clusters_{space}"
        lvl = f"AND c.level = {level}" if tables.has(view, "level") else ""
        summary = f"{view}_summary"
        if tables.has(summary, "cluster_id", "size", "exemplar_ids"):
            slvl = f"WHERE level = {level}" if tables.has(summary, "level") else ""
            rows = tables.cat.query(
                f"""WITH s AS (SELECT cluster_id, size, exemplar_ids FROM {summary} {slvl}
                               ORDER BY size DESC, cluster_id LIMIT {int(n_clusters)}),
                         e AS (SELECT cluster_id, size, unnest(exemplar_ids[1:{int(per)}])
                               AS image_id, generate_subscripts(exemplar_ids[1:{int(per)}], 1)
                               AS rank FROM s)
                    SELECT e.*, i.first_path FROM e JOIN images i USING (image_id)
                    ORDER BY size DESC, cluster_id, rank"""
            ).to_pylist()
        else:
            order = "c.is_exemplar DESC, " if tables.has(view, "is_exemplar") else ""
            sim = "c.similarity DESC NULLS LAST, " if tables.has(view, "similarity") else ""
            rows = tables.cat.query(
                f"""WITH s AS (SELECT cluster_id, count(*) AS size FROM {view} c
                               WHERE true {lvl} GROUP BY 1 ORDER BY size DESC, cluster_id
                               LIMIT {int(n_clusters)})
                    SELECT c.image_id, c.cluster_id, s.size, i.first_path
                    FROM {view} c JOIN s USING (cluster_id) JOIN images i USING (image_id)
                    WHERE true {lvl}
                    QUALIFY row_number() OVER (PARTITION BY c.cluster_id
                            ORDER BY {order}{sim}c.image_id) <= {int(per)}
                    ORDER BY s.size DESC, c.cluster_id"""
            ).to_pylist()
        gal = Gallery(
            f"exemplars-{space}",
            f"{space.upper()} cluster exemplars",
            f"level {level} (k={k}): the {n_clusters} largest clusters, images closest to "
            "the centroid first",
        )
        groups: dict[str, list[Tile]] = {}
        for r in rows:
            key = f"cluster {r['cluster_id']} ({_n(int(r['size']))})"
            groups.setdefault(key, []).append(
                Tile(r["image_id"], "", str(r["first_path"] or ""), r["image_id"])
            )
        gal.groups = list(groups.items())
        out.append(gal)
    return out


def motif_galleries(tables: Tables, n_motifs: int, per: int) -> list[Gallery]:
    """Motif sheets, one per embedding space: exemplar segments of the largest motifs (segment
    clusters), cropped from their images."""
    if not tables.has("segments", "segment_id", "image_id", "bbox", "mask_width", "mask_height"):
        return []
    summary = tables.find_with(
        "cluster_id", "size", "exemplar_segment_ids", prefer=("motifs_clusters",)
    )
    member = tables.find_with("segment_id", "cluster_id", prefer=("motifs",))
    if summary is None and member is None:
        return []
    spaces: list[str | None] = [None]
    src = summary or member or ""
    if tables.has(src, "space"):
        spaces = [
            str(r[0]) for r in tables.cat.rows(f"SELECT DISTINCT space FROM {qi(src)} ORDER BY 1")
        ]
    out = []
    for space in spaces:
        where = "" if space is None else f"AND space = '{space.replace(chr(39), '')}'"
        if summary is not None:
            rows = tables.cat.query(
                f"""WITH s AS (SELECT cluster_id, size, exemplar_segment_ids AS ex
                               FROM {qi(summary)} WHERE true {where}
                               ORDER BY size DESC, cluster_id LIMIT {int(n_motifs)}),
                         e AS (SELECT cluster_id, size, unnest(ex[1:{int(per)}]) AS segment_id,
                                      generate_subscripts(ex[1:{int(per)}], 1) AS rank FROM s)
                    SELECT e.cluster_id, e.size, e.segment_id, g.image_id, g.bbox,
                           g.mask_width, g.mask_height, i.first_path
                    FROM e JOIN segments g USING (segment_id) JOIN images i USING (image_id)
                    ORDER BY e.size DESC, e.cluster_id, e.rank"""
            ).to_pylist()
        else:
            rank = ["m.is_exemplar DESC"] if tables.has(member or "", "is_exemplar") else []
            if tables.has(member or "", "similarity"):
                rank.append("m.similarity DESC NULLS LAST")
            order = ", ".join([*rank, "m.segment_id"])
            rows = tables.cat.query(
                f"""WITH s AS (SELECT cluster_id, count(*) AS size FROM {qi(member or "")}
                               WHERE true {where} GROUP BY 1 ORDER BY size DESC, cluster_id
                               LIMIT {int(n_motifs)})
                    SELECT m.cluster_id, s.size, m.segment_id, g.image_id, g.bbox,
                           g.mask_width, g.mask_height, i.first_path
                    FROM {qi(member or "")} m JOIN s USING (cluster_id)
                    JOIN segments g USING (segment_id) JOIN images i ON i.image_id = g.image_id
                    WHERE true {where.replace("space", "m.space")}
                    QUALIFY row_number() OVER (PARTITION BY m.cluster_id ORDER BY {order})
                            <= {int(per)}
                    ORDER BY s.size DESC, m.cluster_id"""
            ).to_pylist()
        label = (space or "").upper()
        gal = Gallery(
            f"motifs-{space or 'all'}",
            f"{label} motif sheets".strip(),
            f"the {n_motifs} largest motifs (segment clusters), exemplar segments cropped "
            "from their images",
        )
        groups: dict[str, list[Tile]] = {}
        for r in rows:
            x, y, w, h = (float(c) for c in r["bbox"])
            mw, mh = float(r["mask_width"] or 1), float(r["mask_height"] or 1)
            crop = [x / mw, y / mh, (x + w) / mw, (y + h) / mh]
            name = f"motif {r['cluster_id']} ({_n(int(r['size']), 'segment')})"
            groups.setdefault(name, []).append(
                Tile(r["segment_id"], "", str(r["first_path"] or ""), r["image_id"], crop)
            )
        gal.groups = list(groups.items())
        out.append(gal)
    return out


def wants_of(galleries: list[Gallery], extra_ids: list[str]) -> pa.Table:
    """Thumbnail wants (``WANTS_SCHEMA``) of every tile and of ``extra_ids`` (map points)."""
    ids, imgs, crops = [], [], []
    for g in galleries:
        for t in g.all_tiles():
            ids.append(t.thumb_id)
            imgs.append(t.image_id or t.thumb_id)
            crops.append(t.crop)
    for i in extra_ids:
        ids.append(i)
        imgs.append(i)
        crops.append(None)
    return pa.table({"thumb_id": ids, "image_id": imgs, "crop": crops}, schema=WANTS_SCHEMA)
