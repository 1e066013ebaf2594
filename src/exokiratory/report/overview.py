"""The overview: counts per status, per flag, per modality, duplicates, per-pass progress, and
the random-weight models behind any table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables, qi
from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.flags.section import DESCRIPTIVE_FLAGS, NOT_PROBLEMS, flag_columns
from exokiratory.passes.zeroshot.section import modality_sql

#: keys of the workspace status shown elsewhere in the overview (the rest go to ``extra``)
SHOWN_STATUS = (
    "workspace",
    "images_by_status",
    "paths_by_status",
    "exact_duplicate_paths",
    "last_scan",
    "passes",
    "derived",
)


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
class FlagCounts:
    flags: dict[str, int] = field(default_factory=dict)
    n_flagged_images: int = 0
    near_duplicate_groups: int = 0
    near_duplicate_members: int = 0


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
    #: view -> ids of the random-weight models whose rows it holds
    random_weight: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def duplicates(self) -> dict[str, int]:
        return {
            "exact-duplicate paths": self.exact_duplicate_paths,
            "images with exact duplicates": self.images_with_exact_duplicates,
            "near-duplicate groups": self.near_duplicate_groups,
            "images in near-duplicate groups": self.near_duplicate_members,
        }

    @property
    def flags_by_count(self) -> dict[str, int]:
        return dict(sorted(self.flags.items(), key=lambda kv: -kv[1]))

    @property
    def errors(self) -> list[tuple[str, str, str]]:
        return [(p.name, k, m) for p in self.passes for k, m in p.errors]

    @property
    def other_jobs(self) -> dict[str, dict[str, Any]]:
        """Logged steps that are not passes of the status (derivations, thumbnails...)."""
        names = {p.name for p in self.passes}
        return {k: v for k, v in self.jobs_by_pass.items() if k not in names}


def _counts(tables: Tables, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in tables.cat.rows(sql)}


def flag_counts(tables: Tables) -> FlagCounts:
    """Images per flag, images with a problem flag, near-duplicate groups and members."""
    flags = flag_columns(tables)
    out = FlagCounts()
    if not flags or not tables.nonempty("flags"):
        return out
    out.flags = {c: tables.n_true("flags", c) for c in flags}
    problems = [c for c in flags if c not in NOT_PROBLEMS | DESCRIPTIVE_FLAGS]
    anyf = " OR ".join(qi(c) for c in problems) or "false"
    out.n_flagged_images = int(tables.cat.scalar(f"SELECT count(*) FROM flags WHERE {anyf}") or 0)
    if tables.has("flags", "dup_group_id"):
        r = tables.cat.rows(
            "SELECT count(DISTINCT dup_group_id), count(dup_group_id) FROM flags "
            "WHERE dup_group_id IS NOT NULL"
        )[0]
        out.near_duplicate_groups, out.near_duplicate_members = int(r[0]), int(r[1])
    return out


def modality_counts(tables: Tables) -> tuple[dict[str, int], str | None]:
    src = modality_sql(tables)
    if src is None:
        return {}, None
    sql = f"SELECT coalesce(label, '(none)'), count(*) FROM ({src[0]}) GROUP BY 1 ORDER BY 2 DESC"
    return _counts(tables, sql), src[1]


def jobs_by_pass(tables: Tables) -> dict[str, dict[str, Any]]:
    """Batches, units, errors and seconds per logged step (the jobs log)."""
    jobs: dict[str, dict[str, Any]] = {}
    if not tables.nonempty("jobs"):
        return jobs
    for name, ok, failed, skipped, units, errors, secs, last in tables.cat.rows(
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
    return jobs


def pass_progress(status: Any, jobs: dict[str, dict[str, Any]]) -> list[PassProgress]:
    return [
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


def random_weight_models(tables: Tables) -> dict[str, tuple[str, ...]]:
    """view -> the random-weight (``tiny:``) model ids among its rows' ``model_id``: one small
    aggregate per view that records a model."""
    out: dict[str, tuple[str, ...]] = {}
    for name, t in tables.info.items():
        if t.error is not None or not t.rows or t.columns.get("model_id") != "VARCHAR":
            continue
        rows = tables.cat.rows(
            f"SELECT DISTINCT model_id FROM {qi(name)} WHERE starts_with(model_id, ?) ORDER BY 1",
            [TINY_PREFIX],
        )
        if rows:
            out[name] = tuple(str(r[0]) for r in rows)
    return out


def gather_overview(tables: Tables, status: Any) -> Overview:
    flags = flag_counts(tables)
    modality, modality_source = modality_counts(tables)
    with_dups = int(tables.cat.scalar("SELECT count(*) FROM images WHERE n_paths > 1") or 0)
    jobs = jobs_by_pass(tables)
    return Overview(
        images_by_status=dict(status.images_by_status),
        paths_by_status=dict(status.paths_by_status),
        exact_duplicate_paths=int(status.exact_duplicate_paths),
        images_with_exact_duplicates=with_dups,
        near_duplicate_groups=flags.near_duplicate_groups,
        near_duplicate_members=flags.near_duplicate_members,
        flags=flags.flags,
        n_flagged_images=flags.n_flagged_images,
        modality=modality,
        modality_source=modality_source,
        passes=pass_progress(status, jobs),
        derived=[dict(d.__dict__) for d in getattr(status, "derived", [])],
        jobs_by_pass=jobs,
        extra={k: v for k, v in status.to_dict().items() if k not in SHOWN_STATUS},
    )
