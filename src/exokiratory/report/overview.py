"""The overview: counts per status, per flag, per modality, duplicates, per-pass progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exokiratory.report.tables import Tables, qi

#: Boolean flags that are not problems: routing decisions and canonical markers.
NOT_PROBLEMS = frozenset(
    {"is_worth_gpu", "is_dup_canonical", "is_semantic_dup_canonical", "is_text_heavy"}
)
#: Boolean flags that describe content (modality, people, density): shown as label samples.
DESCRIPTIVE_FLAGS = frozenset(
    {"is_photo", "is_scan", "is_graphic", "is_human_present", "is_dense_scene"}
)

#: Columns that hold a modality label, in order of preference.
MODALITY_COLUMNS = ("modality",)


@dataclass
class PassProgress:
    name: str
    version: str
    done: int
    wanted: int
    failed: int
    remaining: int
    last_run: str | None
    errors: list[tuple[str, str]] = field(default_factory=list)
    batches: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Overview:
    images_by_status: dict[str, int]
    paths_by_status: dict[str, int]
    exact_duplicate_paths: int
    images_with_exact_duplicates: int
    near_duplicate_groups: int
    near_duplicate_members: int
    flags: dict[str, int]
    n_flagged_images: int
    modality: dict[str, int]
    modality_source: str | None
    passes: list[PassProgress]
    derived: list[dict[str, Any]]
    jobs_by_pass: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def _counts(tables: Tables, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in tables.cat.rows(sql)}


def flag_columns(tables: Tables) -> list[str]:
    t = tables.get("flags")
    if t is None:
        return []
    return [c for c, typ in t.columns.items() if c.startswith("is_") and typ == "BOOLEAN"]


def zeroshot_view(tables: Tables) -> str | None:
    """A long-format zero-shot table (image_id, group_id, class_id, prob), if any."""
    return tables.find_with("image_id", "group_id", "class_id", "prob", prefer=("zeroshot",))


def zeroshot_groups(tables: Tables) -> list[str]:
    """The zero-shot groups (queried once per build)."""
    view = zeroshot_view(tables)
    if view is None:
        return []
    return tables.memo(
        f"zeroshot_groups:{view}",
        lambda: [
            str(r[0])
            for r in tables.cat.rows(f"SELECT DISTINCT group_id FROM {qi(view)} ORDER BY 1")
        ],
    )


def zeroshot_sql(view: str, group: str) -> str:
    """image_id and the most probable class of one zero-shot group."""
    g = group.replace("'", "''")
    return (
        f"SELECT image_id, arg_max(class_id, prob) AS label FROM {qi(view)} "
        f"WHERE group_id = '{g}' GROUP BY image_id"
    )


def modality_sql(tables: Tables) -> tuple[str, str] | None:
    """(SQL selecting ``image_id, label`` = the modality of each image, where it comes from):
    a ``modality`` column written by a pass, else the zero-shot ``modality`` group."""
    for col in MODALITY_COLUMNS:
        view = tables.find_with("image_id", col, prefer=("flags", "cues", "modality"))
        if view is not None:
            return (
                f"SELECT image_id, {qi(col)}::VARCHAR AS label FROM {qi(view)}",
                f"{view}.{col}",
            )
    view = zeroshot_view(tables)
    if view is not None and "modality" in zeroshot_groups(tables):
        return zeroshot_sql(view, "modality"), f"zero-shot CLIP ({view}, group 'modality')"
    return None


def gather_overview(tables: Tables, status: Any) -> Overview:
    cat = tables.cat
    flags = flag_columns(tables)
    flag_counts: dict[str, int] = {}
    n_flagged = 0
    groups = members = 0
    if flags and tables.nonempty("flags"):
        flag_counts = {c: tables.n_true("flags", c) for c in flags}
        problems = [c for c in flags if c not in NOT_PROBLEMS | DESCRIPTIVE_FLAGS]
        anyf = " OR ".join(qi(c) for c in problems) or "false"
        n_flagged = int(cat.scalar(f"SELECT count(*) FROM flags WHERE {anyf}") or 0)
        if tables.has("flags", "dup_group_id"):
            r = cat.rows(
                "SELECT count(DISTINCT dup_group_id), count(dup_group_id) FROM flags "
                "WHERE dup_group_id IS NOT NULL"
            )[0]
            groups, members = int(r[0]), int(r[1])
    modality: dict[str, int] = {}
    src = modality_sql(tables)
    if src is not None:
        modality = _counts(
            tables,
            f"SELECT coalesce(label, '(none)'), count(*) FROM ({src[0]}) GROUP BY 1 ORDER BY 2 DESC",
        )
    with_dups = int(cat.scalar("SELECT count(*) FROM images WHERE n_paths > 1") or 0)
    jobs: dict[str, dict[str, Any]] = {}
    if tables.nonempty("jobs"):
        for name, ok, failed, skipped, units, errors, secs, last in cat.rows(
            """SELECT pass_name, count(*) FILTER (WHERE status = 'ok'),
                      count(*) FILTER (WHERE status = 'failed'),
                      count(*) FILTER (WHERE status = 'skipped'),
                      sum(n_units) FILTER (WHERE status = 'ok'), sum(n_errors),
                      sum(seconds), strftime(max(finished_at), '%Y-%m-%d %H:%M:%S')
               FROM jobs GROUP BY pass_name ORDER BY max(finished_at)"""
        ):
            jobs[str(name)] = {
                "batches ok": int(ok),
                "batches failed": int(failed),
                "batches skipped": int(skipped),
                "units": int(units or 0),
                "unit errors": int(errors or 0),
                "seconds": float(secs or 0.0),
                "last": last,
            }
    passes = [
        PassProgress(
            p.name,
            p.version,
            p.done,
            p.wanted,
            p.failed,
            p.remaining,
            p.last_run,
            list(p.recent_errors),
            {k: v for k, v in jobs.get(p.name, {}).items() if k.startswith("batches")},
            float(jobs.get(p.name, {}).get("seconds", 0.0)),
        )
        for p in status.passes
    ]
    derived = [dict(d.__dict__) for d in getattr(status, "derived", [])]
    extra = {
        k: v
        for k, v in status.to_dict().items()
        if k
        not in (
            "workspace",
            "images_by_status",
            "paths_by_status",
            "exact_duplicate_paths",
            "last_scan",
            "passes",
            "derived",
        )
    }
    return Overview(
        images_by_status=dict(status.images_by_status),
        paths_by_status=dict(status.paths_by_status),
        exact_duplicate_paths=int(status.exact_duplicate_paths),
        images_with_exact_duplicates=with_dups,
        near_duplicate_groups=groups,
        near_duplicate_members=members,
        flags=flag_counts,
        n_flagged_images=n_flagged,
        modality=modality,
        modality_source=src[1] if src else None,
        passes=passes,
        derived=derived,
        jobs_by_pass=jobs,
        extra=extra,
    )
