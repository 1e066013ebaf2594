"""The flags family on the report: distributions with the flag thresholds, and flag galleries.

* section ``distributions``: histograms of the PASS 1 signals and of the flag scores, with the
  thresholds that made the current flags (:mod:`.histograms`);
* blocks of the galleries: the worst offenders of each flag, content labels and duplicate groups
  (``flag-galleries``), and seeded samples per stratum (``strata``) (:mod:`.galleries`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exokiratory.core.histograms import Histogram
from exokiratory.engine.sections import Gallery, SectionContext, register_section
from exokiratory.passes.flags.section.galleries import (
    DESCRIPTIVE_FLAGS,
    NOT_PROBLEMS,
    duplicate_galleries,
    flag_columns,
    label_gallery,
    offender_galleries,
    strata_gallery,
    stratum_expression,
)
from exokiratory.passes.flags.section.histograms import flag_params, gather_histograms

__all__ = [
    "DESCRIPTIVE_FLAGS",
    "NOT_PROBLEMS",
    "Distributions",
    "FlagGalleries",
    "flag_columns",
    "gather_histograms",
    "stratum_expression",
]


@dataclass
class Distributions:
    features: list[Histogram] = field(default_factory=list)
    flags: list[Histogram] = field(default_factory=list)


@register_section(
    "distributions",
    title="Distributions",
    order=30,
    template="distributions.html.j2",
    needs=("features",),
)
def gather_distributions(ctx: SectionContext) -> Distributions:
    params = flag_params(ctx.tables, dict(ctx.step_params.get("flags") or {}))
    feats, flags = gather_histograms(ctx.tables, params, ctx.params.histogram_bins)
    return Distributions(feats, flags)


@dataclass
class FlagGalleries:
    offenders: list[Gallery]
    unflagged: list[str]
    labels: Gallery | None
    duplicates: list[Gallery]


@register_section(
    "flag-galleries",
    title="",
    order=10,
    parent="galleries",
    template="flag_galleries.html.j2",
    needs=("flags", "images_routed"),
    missing="flags not computed yet: run {run}",
)
def gather_flag_galleries(ctx: SectionContext) -> FlagGalleries | None:
    if not ctx.tables.nonempty("flags"):
        return None
    p = ctx.params
    offenders, unflagged = offender_galleries(ctx.tables, p.gallery_size)
    labels = label_gallery(ctx.tables, p.per_stratum)
    duplicates = duplicate_galleries(ctx.tables, p.dup_groups)
    ctx.show(*offenders, labels, *duplicates)
    return FlagGalleries(offenders, unflagged, labels, duplicates)


@register_section(
    "strata",
    title="",
    order=30,
    parent="galleries",
    template="galleries.html.j2",
    quiet=True,
)
def gather_strata(ctx: SectionContext) -> list[Gallery] | None:
    p = ctx.params
    return ctx.show(strata_gallery(ctx.tables, p.per_stratum, p.seed)) or None
