"""``status``: what is done, wanted and failed, read from the outputs and the jobs log only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.catalog import Catalog
from exokiratory.engine.planner import unit_counts
from exokiratory.engine.step import Derivation, Pass, Step


@dataclass
class PassStatus:
    name: str
    version: str
    wanted: int
    done: int
    failed: int
    last_run: str | None
    recent_errors: list[tuple[str, str]] = field(default_factory=list)
    failed_batches: int = 0
    #: the error of the newest failed batch when no batch succeeded after it (e.g. the model
    #: could not be loaded): the pass is failing, not merely incomplete
    last_failure: str | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.wanted - self.done - self.failed)


@dataclass
class DerivedStatus:
    name: str
    version: str
    rows: int
    up_to_date: bool
    last_run: str | None
    summary: dict[str, int] = field(default_factory=dict)


@dataclass
class WorkspaceStatus:
    workspace: str
    images_by_status: dict[str, int]
    paths_by_status: dict[str, int]
    exact_duplicate_paths: int
    last_scan: str | None
    passes: list[PassStatus]
    derived: list[DerivedStatus] = field(default_factory=list)
    #: CLIP-vs-DINO cluster agreement per level (see :func:`cluster_agreement`)
    cluster_agreement: list[dict[str, Any]] = field(default_factory=list)
    #: PASS 5: units selected, captions per pass / model / prompt version (random-weight
    #: models marked; see :mod:`exokiratory.passes.captions.summary`)
    captions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "images_by_status": self.images_by_status,
            "paths_by_status": self.paths_by_status,
            "exact_duplicate_paths": self.exact_duplicate_paths,
            "last_scan": self.last_scan,
            "passes": [
                {
                    **p.__dict__,
                    "remaining": p.remaining,
                    "recent_errors": [list(e) for e in p.recent_errors],
                }
                for p in self.passes
            ],
            "derived": [d.__dict__ for d in self.derived],
            "cluster_agreement": self.cluster_agreement,
            "captions": self.captions,
        }


def _counts(cat: Catalog, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in cat.rows(sql)}


def workspace_status(
    cat: Catalog, passes: Sequence[Step[Any]], n_errors: int = 5
) -> WorkspaceStatus:
    # every pass's units read the manifest views: compute them once for the whole status
    with cat.materialized(["paths", "images"]):
        return _workspace_status(cat, passes, n_errors)


def _workspace_status(cat: Catalog, passes: Sequence[Step[Any]], n_errors: int) -> WorkspaceStatus:
    images = _counts(cat, "SELECT status, count(*) FROM images GROUP BY status ORDER BY status")
    paths = _counts(cat, "SELECT status, count(*) FROM paths GROUP BY status ORDER BY status")
    # image_paths has one row per image with a present path (a stored copy: no distinct count)
    dup_paths = paths.get("image", 0) - int(cat.scalar("SELECT count(*) FROM image_paths") or 0)
    last_scan = _last_run(cat, "scan")
    shared: dict[str, str] = {}  # passes that want the same units count them once
    try:
        out = [_pass_status(cat, p, n_errors, shared) for p in passes if isinstance(p, Pass)]
    finally:
        for table in shared.values():
            cat.rows(f"DROP TABLE IF EXISTS {table}")
    derived = [_derived_status(cat, d) for d in passes if isinstance(d, Derivation)]
    return WorkspaceStatus(
        cat.storage.url,
        images,
        paths,
        dup_paths,
        last_scan,
        out,
        derived,
        cluster_agreement(cat),
        _captions(cat),
    )


def _captions(cat: Catalog) -> dict[str, Any]:
    from exokiratory.passes.captions.summary import caption_summary

    return caption_summary(cat)


def cluster_agreement(cat: Catalog) -> list[dict[str, Any]]:
    """Per level, how much the CLIP and the DINOv2 clusterings agree on the images both
    clustered: adjusted Rand index and adjusted mutual information (1 = identical partitions,
    about 0 = independent). Levels are matched by rank (level 0 = finest in both). High
    agreement means semantics (CLIP) and structure (DINO) see the same groups; a low value at
    a level says the two views still disagree there. Empty when either clustering is missing."""
    if not {"clusters_clip", "clusters_dino"} <= set(cat.views):
        return []
    from exokiratory.passes.clusters.step import level_agreement

    ks = {
        (space, int(level)): int(k)
        for space in ("clip", "dino")
        for level, k in cat.rows(f"SELECT DISTINCT level, k FROM clusters_{space}")
    }
    return [
        {
            "level": r["level"],
            "k_clip": ks[("clip", r["level"])],
            "k_dino": ks[("dino", r["level"])],
            **{key: r[key] for key in ("n_images", "ari", "ami")},
        }
        for r in level_agreement(cat.con, "clusters_clip", "clusters_dino")
    ]


def _pass_status(cat: Catalog, p: Pass, n_errors: int, shared: dict[str, str]) -> PassStatus:
    try:
        wanted, done, failed = unit_counts(cat, p, shared=shared)
    except (ValueError, RuntimeError) as exc:  # e.g. an edited caption prompt: say so, go on
        return PassStatus(
            p.name, p.full_version, 0, 0, 0, _last_run(cat, p.name), [("-", str(exc))]
        )
    errs = _newest_errors(cat, p, n_errors)
    failed_batches = int(
        cat.scalar("SELECT count(*) FROM jobs WHERE pass_name = ? AND status = 'failed'", [p.name])
        or 0
    )
    return PassStatus(
        last_failure=_last_failure(cat, p.name),
        name=p.name,
        version=p.full_version,
        wanted=wanted,
        done=done,
        failed=failed,
        last_run=_last_run(cat, p.name),
        recent_errors=errs,
        failed_batches=failed_batches,
    )


def _last_failure(cat: Catalog, name: str) -> str | None:
    r = cat.rows(
        """SELECT status, error FROM jobs WHERE pass_name = ? AND status IN ('ok', 'failed')
           ORDER BY finished_at DESC NULLS LAST LIMIT 1""",
        [name],
    )
    return str(r[0][1]) if r and r[0][0] == "failed" else None


def _newest_errors(cat: Catalog, p: Pass, n: int) -> list[tuple[str, str]]:
    """Current error rows, newest batch first (batch finish times from the jobs log)."""
    src = cat.raw_source(p.output_rel)
    if not src:
        return []
    rows = cat.rows(
        f"""WITH errs AS (
              SELECT CAST(e."{p.key[0]}" AS VARCHAR) AS k, e.error,
                     regexp_extract(e.filename, '[^/]+$') AS part
              FROM {src} e JOIN "{p.view_name}" v USING ({", ".join(p.key)})
              WHERE e.error IS NOT NULL AND v.error IS NOT NULL)
            SELECT k, errs.error FROM errs
            LEFT JOIN (SELECT batch, max(finished_at) AS t FROM jobs WHERE pass_name = ?
                       GROUP BY batch) j ON j.batch = errs.part
            QUALIFY row_number() OVER (PARTITION BY k ORDER BY j.t DESC NULLS LAST) = 1
            ORDER BY j.t DESC NULLS LAST, k LIMIT {int(n)}""",
        [p.name],
    )
    return [(str(a), str(b)) for a, b in rows]


def _derived_status(cat: Catalog, d: Derivation) -> DerivedStatus:
    from exokiratory.core.dataset import current_folder
    from exokiratory.engine.derive import input_fingerprint

    rows = int(cat.scalar(f'SELECT count(*) FROM "{d.view_name}"') or 0)
    current = current_folder(cat.storage, d.dataset)
    wanted = f"{d.dataset}/{d.full_version}-{input_fingerprint(cat.storage, d)}"
    summary: dict[str, int] = {}
    bool_cols = [f.name for f in d.output_schema() if f.name.startswith("is_")]
    if rows and bool_cols:  # a derivation without flags (zeroshot) has nothing to count
        sums = ", ".join(f'count(*) FILTER (WHERE "{c}")' for c in bool_cols)
        r = cat.rows(f'SELECT {sums} FROM "{d.view_name}"')
        summary = {c: int(v) for c, v in zip(bool_cols, r[0], strict=True)} if r else {}
    return DerivedStatus(
        d.name, d.full_version, rows, current == wanted, _last_run(cat, d.name), summary
    )


def _last_run(cat: Catalog, name: str) -> str | None:
    r = cat.scalar(
        "SELECT strftime(max(finished_at), '%Y-%m-%d %H:%M:%S') FROM jobs WHERE pass_name = ?",
        [name],
    )
    return None if r is None else str(r)
