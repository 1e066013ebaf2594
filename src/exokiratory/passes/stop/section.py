"""The stop condition on the report (section ``stop``, "When to move on"): the same
:func:`exokiratory.passes.stop.verdict.measure` as ``exokiratory stop``, so the panel shows the
numbers the command prints."""

from __future__ import annotations

from exokiratory.engine.sections import SectionContext, register_section
from exokiratory.passes.stop.verdict import StopResult, measure, pending_passes


# page order: what a person came to see first (counts, image galleries), the stop panel below
@register_section("stop", title="When to move on", order=85, template="stop.html.j2")
def gather(ctx: SectionContext) -> StopResult:
    return measure(
        ctx.storage,
        ctx.step_params.get("stop"),
        catalog=ctx.tables.cat,
        pending=pending_passes(ctx.status),
    )
