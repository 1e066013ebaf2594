"""The sample family on the report: section ``samples``, per named sample (its newest version),
per grouping, the population against the sample per stratum and the TV / KL distances.

A grouping by clusters (``clip level 1``...) is marked random-weight on the page when the
clusters come from random-weight models (the template asks ``random_weight_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables
from exokiratory.engine.sections import SectionContext, register_section

SPACES = ("clip", "dino")
MAX_STRATA = 30  # strata rows shown per grouping (the largest populations)


@dataclass
class SampleGrouping:
    name: str
    space: str  # "clip"/"dino" for a grouping by clusters, else ""
    distances: dict[str, Any]
    strata: list[dict[str, Any]]
    n_strata: int


@dataclass
class SampleBlock:
    sample: str
    version: int
    n_members: int
    rule: str
    groupings: list[SampleGrouping] = field(default_factory=list)


def _space(grouping: str) -> str:
    first = grouping.split(" ", 1)[0].lower()
    return first if first in SPACES else ""


def _current(tables: Tables) -> list[tuple[str, int, int, str]]:
    """(sample, newest version, members, rule) per sample."""
    rows = tables.cat.rows(
        """SELECT sample, version, count(*), min(rule) FROM samples
           GROUP BY sample, version
           QUALIFY version = max(version) OVER (PARTITION BY sample) ORDER BY sample"""
    )
    return [(str(s), int(v), int(n), str(r)) for s, v, n, r in rows]


def _groupings(tables: Tables, sample: str, version: int) -> list[SampleGrouping]:
    dist: dict[str, dict[str, Any]] = {}
    if tables.nonempty("samples_distances"):
        for r in tables.cat.query(
            "SELECT * EXCLUDE (sample, version) FROM samples_distances "
            "WHERE sample = ? AND version = ? ORDER BY grouping",
            [sample, version],
        ).to_pylist():
            dist[str(r.pop("grouping"))] = r
    strata: dict[str, list[dict[str, Any]]] = {}
    if tables.nonempty("samples_strata"):
        for r in tables.cat.query(
            "SELECT grouping, stratum, population, sampled FROM samples_strata "
            "WHERE sample = ? AND version = ? ORDER BY grouping, population DESC, stratum",
            [sample, version],
        ).to_pylist():
            strata.setdefault(str(r.pop("grouping")), []).append(r)
    names = sorted(set(dist) | set(strata))
    return [
        SampleGrouping(
            g, _space(g), dist.get(g, {}), strata.get(g, [])[:MAX_STRATA], len(strata.get(g, []))
        )
        for g in names
    ]


@register_section(
    "samples",
    title="Samples",
    order=80,
    template="samples.html.j2",
    needs=("samples*",),
    missing="no named sample yet: draw one with exokiratory sample NAME N",
)
def gather_samples(ctx: SectionContext) -> list[SampleBlock] | None:
    t = ctx.tables
    if not t.nonempty("samples"):
        return None
    return [
        SampleBlock(s, v, n, rule, _groupings(t, s, v)) for s, v, n, rule in _current(t)
    ] or None
