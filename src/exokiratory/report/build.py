"""Building a report: gather every registered section from the views, make the thumbnails they
asked for, render the templates, write the page atomically."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exokiratory.core.config import default_workers
from exokiratory.core.progress import progress_bar
from exokiratory.core.tables import Tables
from exokiratory.engine.sections import (
    ReportSection,
    SectionContext,
    children,
    page_sections,
)
from exokiratory.report import sections  # noqa: F401  (registers the report's own sections)
from exokiratory.report.overview import random_weight_models
from exokiratory.report.params import ReportParams
from exokiratory.report.render import Page, Part, environment, render_page, render_part
from exokiratory.report.render import section_hint as _hint
from exokiratory.report.thumbs import Thumb, ThumbParams, ThumbStore, ThumbWants

if TYPE_CHECKING:
    from exokiratory.api.workspace import Workspace
    from exokiratory.core.catalog import Catalog
    from exokiratory.engine.step import Step

log = logging.getLogger(__name__)

REPORTS = "reports"

#: the workspace status of a catalog (``exokiratory.api.status.workspace_status``)
StatusOf = Callable[["Catalog", list["Step[Any]"]], Any]


@dataclass
class ReportResult:
    rel: str
    url: str
    local_path: str | None
    seconds: float
    n_thumbs_made: int
    n_thumbs: int
    size_bytes: int

    def summary(self) -> str:
        return (
            f"report written to {self.local_path or self.url} ({self.size_bytes / 1e6:.1f} MB, "
            f"{self.n_thumbs} thumbnails, {self.n_thumbs_made} new); {self.seconds:.1f}s"
        )


def build_report(
    ws: Workspace, params: ReportParams, *, status: StatusOf, progress: bool | None = None
) -> ReportResult:
    """Build ``reports/<name>.html`` for a workspace (see :mod:`exokiratory.report`)."""
    t0 = time.monotonic()
    step_views = {s.name: list(s.views()) for s in ws._all_steps()}
    wants = ThumbWants()
    steps = ws.passes()
    with ws.catalog(steps) as cat:
        tables = Tables(cat)
        ctx = SectionContext(
            tables,
            params,
            wants,
            ws.storage,
            None,
            step_views,
            {k: dict(v or {}) for k, v in ws.config.passes.items()},
        )
        parts = _gather(ctx, lambda: status(cat, steps), progress)
    thumbs, made = _thumbnails(ws, params, wants, progress)
    page = Page(
        title=f"exokiratory report: {params.name}",
        workspace=ws.storage.url,
        built_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=time.monotonic() - t0,
        n_images=sum(ctx.status.images_by_status.values()),
        parts=parts,
        thumbs=thumbs,
        random_weight=dict(ctx.random_weight),
    )
    html = _render(page, step_views).encode("utf-8")
    return _write(ws, params, html, t0, made, sum(1 for t in thumbs.values() if t.jpeg))


def _gather(ctx: SectionContext, status: Callable[[], Any], progress: bool | None) -> list[Part]:
    """Every page section and its blocks, gathered in order (one progress step each)."""
    tops = page_sections()
    n = 1 + sum(1 + len(children(s.id)) for s in tops)
    with progress_bar("report", n, progress) as advance:
        ctx.tables.summarise()
        ctx.status = status()
        ctx.random_weight = random_weight_models(ctx.tables)
        advance()
        parts = []
        for s in tops:
            part = _gather_one(s, ctx)
            advance()
            for child in children(s.id):
                part.children.append(_gather_one(child, ctx))
                advance()
            parts.append(part)
    return parts


def _gather_one(s: ReportSection, ctx: SectionContext) -> Part:
    """A section's data; a section that fails says so on the page instead of failing it."""
    if s.gather is None:
        return Part(s)
    try:
        return Part(s, s.gather(ctx))
    except Exception as exc:
        log.warning("report section %r failed", s.id, exc_info=True)
        return Part(s, error=f"{type(exc).__name__}: {exc}")


def _thumbnails(
    ws: Workspace, params: ReportParams, wants: ThumbWants, progress: bool | None
) -> tuple[dict[str, Thumb], int]:
    """(the thumbnails the sections asked for, how many were made now)."""
    store = ThumbStore(ws, ThumbParams(size=params.thumb_size))
    made = store.ensure(
        wants.table(),
        workers=ws.config.run.workers or default_workers(),
        batch_size=ws.config.run.batch_size,
        progress=progress,
    )
    return store.read(wants.ids()), made


def _render(page: Page, step_views: dict[str, list[str]]) -> str:
    everything: Sequence[Part] = [c for p in page.parts for c in (p, *p.children)]
    packages = {p.section.package for p in everything}
    env = environment(packages, page.thumbs, step_views, page.random_weight)
    for part in everything:
        render_part(env, part, _hint(part.section, step_views))
    return render_page(env, page)


def _write(
    ws: Workspace, params: ReportParams, page: bytes, t0: float, made: int, n_thumbs: int
) -> ReportResult:
    rel = f"{REPORTS}/{params.name}.html"
    ws.storage.write_bytes_atomic(rel, page)
    local = ws.storage.path(rel) if ws.storage.is_local else None
    result = ReportResult(
        rel,
        ws.storage.url.rstrip("/") + "/" + rel,
        local,
        time.monotonic() - t0,
        made,
        n_thumbs,
        len(page),
    )
    log.debug("%s", result.summary())  # the callers print it (once)
    return result
