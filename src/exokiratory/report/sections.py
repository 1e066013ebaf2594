"""The report's own sections (registered like a family's): the overview, the galleries (a frame
for the families' gallery blocks) and every table. The stop panel is the ``stop`` family's
(:mod:`exokiratory.passes.stop.section`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exokiratory.core.tables import TableInfo
from exokiratory.engine.sections import (
    ReportSection,
    SectionContext,
    add_section,
    children,
    page_sections,
    register_section,
)
from exokiratory.report.overview import Overview, gather_overview

PACKAGE = "exokiratory.report"


@register_section(
    "overview",
    title="Overview",
    order=20,
    template="overview.html.j2",
    needs=("images", "paths", "jobs"),
)
def gather_overview_section(ctx: SectionContext) -> Overview:
    overview = gather_overview(ctx.tables, ctx.status)
    overview.random_weight = dict(ctx.random_weight)
    return overview


#: the families add their gallery blocks to it (``parent="galleries"``)
add_section(ReportSection("galleries", "Galleries", 25, PACKAGE))


@dataclass
class TableList:
    tables: list[TableInfo]
    producers: dict[str, str] = field(default_factory=dict)  # view -> the step that fills it
    anchors: dict[str, str] = field(default_factory=dict)  # view -> the section showing it


@register_section("tables", title="Every table", order=90, template="tables.html.j2")
def gather_tables(ctx: SectionContext) -> TableList:
    views = list(ctx.tables.info)
    return TableList(
        [ctx.tables.info[v] for v in views],
        producers(views, ctx.step_views),
        anchors(views),
    )


def producers(views: list[str], step_views: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """view -> the first step (in run order) that writes it."""
    out: dict[str, str] = {}
    for name, written in step_views.items():
        for v in written:
            if v in views:
                out.setdefault(v, name)
    return out


def anchors(views: list[str]) -> dict[str, str]:
    """view -> the page section that shows it: the first whose ``needs`` match, else the
    parent of the first block whose ``needs`` do."""
    out: dict[str, str] = {}
    tops = page_sections()
    blocks = [(b, s.id) for s in tops for b in children(s.id)]
    for v in views:
        hit = next((s.id for s in tops if s.shows(v)), None)
        if hit is None:
            hit = next((parent for b, parent in blocks if b.shows(v)), None)
        if hit is not None:
            out[v] = hit
    return out
