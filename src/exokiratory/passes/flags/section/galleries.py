"""Which images the flag galleries show: chosen in SQL (top-N, grouped top-N, seeded samples).

The worst offenders of every flag (ordered by how far their score is past the cut), the most
confident images of each content label, near-duplicate and semantic-duplicate groups with their
canonical first, and seeded random samples per stratum (modality when a pass wrote one, else the
routing strata). Every query is a ``LIMIT`` or a per-group ``row_number()`` over the views, so a
gallery costs one scan of its table at any scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exokiratory.core.tables import TableInfo, Tables, qi
from exokiratory.engine.sections import Gallery, Tile, grouped_tiles, plural, short, tiles
from exokiratory.passes.zeroshot.section import modality_sql

#: Boolean flags that are not problems: routing decisions and canonical markers.
NOT_PROBLEMS = frozenset(
    {"is_worth_gpu", "is_dup_canonical", "is_semantic_dup_canonical", "is_text_heavy"}
)
#: Boolean flags that describe content (modality, people, density): shown as label samples.
DESCRIPTIVE_FLAGS = frozenset(
    {"is_photo", "is_scan", "is_graphic", "is_human_present", "is_dense_scene"}
)
#: Flags without an offender gallery (routing decisions, canonical markers, content labels).
NOT_OFFENDERS = {"is_worth_gpu", "is_dup_canonical", "is_semantic_dup_canonical"}

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

STRATUM_SQL = """CASE WHEN f.is_corrupt THEN 'corrupt' WHEN f.is_junk THEN 'junk'
  WHEN f.is_near_duplicate THEN 'near duplicate' WHEN f.is_text_heavy THEN 'text-heavy'
  WHEN f.is_grayscale THEN 'grayscale' WHEN f.is_outlier THEN 'outlier' ELSE 'other' END"""


def flag_columns(tables: Tables) -> list[str]:
    """The boolean ``is_*`` columns of the ``flags`` view."""
    t = tables.get("flags")
    if t is None:
        return []
    return [c for c, typ in t.columns.items() if c.startswith("is_") and typ == "BOOLEAN"]


def _seeded(seed: int, col: str = "image_id") -> str:
    return f"md5({col} || ':{int(seed)}')"


# -- offenders and labels -----------------------------------------------------------------------
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
        if total:
            out.append(_offender_gallery(tables, t, flag, total, n))
        else:
            empty.append(flag)
    return out, empty


def _offender_gallery(tables: Tables, t: TableInfo, flag: str, total: int, n: int) -> Gallery:
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
    return Gallery(f"flag-{flag}", flag, f"{plural(total)}; {note}", tiles(rows, cap))


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
        gal.groups.append((f"{flag} ({plural(total)})", tiles(rows, "")))
    return gal if gal.groups else None


# -- duplicate groups ---------------------------------------------------------------------------
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
    sizes = {str(r["gid"]): int(r["size"]) for r in rows}
    groups = grouped_tiles(rows, lambda r: str(r["gid"]), lambda r: _duplicate_tile(r, c))
    gal.groups = [(f"group of {plural(sizes[g])} ({g[:8]})", ts) for g, ts in groups]
    return gal


def _duplicate_tile(r: Mapping[str, Any], c: GroupColumns) -> Tile:
    cap = "canonical" if r["is_canonical"] else f"{c.what} {short(r['d'])}"
    tile = Tile(str(r["image_id"]), cap, str(r["first_path"] or ""), str(r["image_id"]))
    tile.badge = "canonical" if r["is_canonical"] else ""
    return tile


# -- strata -------------------------------------------------------------------------------------
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
    groups = grouped_tiles(rows, lambda r: str(r["stratum"]))
    gal.groups = [(f"{k} ({plural(int(counts.get(k, 0)))})", v) for k, v in groups]
    return gal
