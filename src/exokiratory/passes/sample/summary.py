"""How a sample sits in its population: per stratum counts and distribution distances.

For each grouping of the images (each level of the cluster hierarchy of the sample's space, the
``--by`` column, or ``all``): per stratum the population and sample counts, and over the strata
the population holds: total variation distance TV(p, q) = 1/2 sum |p_i - q_i| and
Kullback-Leibler divergence KL(p || q) = sum p_i ln(p_i / q_i) (nats) of the sample's
distribution from the uniform one (how balanced it is) and from the population's (how far it
moved from plain random sampling). The population's own distance from uniform is given for
comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from exokiratory.core.catalog import Catalog
from exokiratory.core.samples import DISTANCES_SCHEMA, STRATA_SCHEMA


@dataclass(frozen=True)
class Grouping:
    """A named labelling of images: ``select`` gives ``image_id`` and ``label``."""

    name: str
    select: str


def cluster_groupings(space: str, levels: Sequence[int]) -> list[Grouping]:
    return [
        Grouping(
            f"{space} level {lv}",
            f"SELECT image_id, cluster_id AS label FROM clusters_{space} WHERE level = {lv}",
        )
        for lv in levels
    ]


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats (terms with p = 0 are 0; q must be > 0 where p > 0)."""
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def distance_row(population: np.ndarray, sampled: np.ndarray) -> dict[str, float | int | None]:
    """The distances of one grouping, over the strata the population holds."""
    m = population > 0
    pop, smp = population[m].astype(np.float64), sampled[m].astype(np.float64)
    k = int(m.sum())
    if k == 0 or smp.sum() == 0:
        return {"n_strata": k}
    p_pop, p_smp, uni = pop / pop.sum(), smp / smp.sum(), np.full(k, 1.0 / k)
    return {
        "n_strata": k,
        "tv_sample_uniform": tv(p_smp, uni),
        "tv_population_uniform": tv(p_pop, uni),
        "tv_sample_population": tv(p_smp, p_pop),
        "kl_sample_uniform": kl(p_smp, uni),
        "kl_sample_population": kl(p_smp, p_pop),
    }


def summarise(
    catalog: Catalog,
    groupings: Sequence[Grouping],
    population: pa.Table,
    members: pa.Table,
    sample: str,
    version: int,
) -> tuple[pa.Table, pa.Table]:
    """The strata and distances tables of a sample version (schemas in core.samples)."""
    catalog.con.register("_sum_pop", population.select(["image_id"]))
    catalog.con.register("_sum_mem", members.select(["image_id"]))
    strata: list[dict[str, object]] = []
    dists: list[dict[str, object]] = []
    try:
        for g in groupings:
            rows = catalog.query(
                f"""SELECT coalesce(CAST(l.label AS VARCHAR), 'null') AS stratum,
                      count(p.image_id) AS population, count(m.image_id) AS sampled
                    FROM ({g.select}) l
                    LEFT JOIN _sum_pop p USING (image_id) LEFT JOIN _sum_mem m USING (image_id)
                    WHERE p.image_id IS NOT NULL OR m.image_id IS NOT NULL
                    GROUP BY 1 ORDER BY population DESC, stratum"""
            ).to_pylist()
            strata += [
                {"sample": sample, "version": version, "grouping": g.name, **r} for r in rows
            ]
            pop = np.array([r["population"] for r in rows], np.int64)
            smp = np.array([r["sampled"] for r in rows], np.int64)
            dists.append(
                {"sample": sample, "version": version, "grouping": g.name, **distance_row(pop, smp)}
            )
    finally:
        catalog.con.unregister("_sum_pop")
        catalog.con.unregister("_sum_mem")
    return (
        pa.Table.from_pylist(strata, schema=STRATA_SCHEMA),
        pa.Table.from_pylist(dists, schema=DISTANCES_SCHEMA),
    )


def _fmt(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"  # type: ignore[arg-type]


def strata_lines(strata: pa.Table, grouping: str, max_rows: int = 20) -> list[str]:
    """A text table of one grouping's strata: population vs sample counts."""
    rows = [r for r in strata.to_pylist() if r["grouping"] == grouping]
    if not rows:
        return []
    width = max(len(grouping) + 10, *(len(str(r["stratum"])) for r in rows[:max_rows]))
    out = [f"  {'stratum (' + grouping + ')':<{width}}  {'population':>10}  {'sampled':>8}"]
    for r in rows[:max_rows]:
        out.append(f"  {r['stratum']!s:<{width}}  {r['population']:>10}  {r['sampled']:>8}")
    if len(rows) > max_rows:
        rest = rows[max_rows:]
        out.append(
            f"  ... {len(rest)} more strata ({sum(r['population'] for r in rest)} images, "
            f"{sum(r['sampled'] for r in rest)} sampled)"
        )
    return out


def distance_lines(distances: pa.Table) -> list[str]:
    out = []
    for d in distances.to_pylist():
        out.append(
            f"  {d['grouping']} ({d['n_strata']} strata): TV from uniform "
            f"{_fmt(d['tv_sample_uniform'])} (population {_fmt(d['tv_population_uniform'])}), "
            f"TV from population {_fmt(d['tv_sample_population'])}; KL from uniform "
            f"{_fmt(d['kl_sample_uniform'])}, from population {_fmt(d['kl_sample_population'])}"
        )
    return out
