"""Drawing and storing a named sample (``exokiratory sample NAME --size N ...``).

Rules: ``balanced`` (default; balanced hierarchical sampling over the ``clusters_<space>``
hierarchy), ``stratified`` (over the values of a per-image column, ``by``), ``uniform``. The
population is described in :mod:`exokiratory.passes.sample.population`; the draw orders in
:mod:`exokiratory.passes.sample.ranking` (a sample is a prefix of its order).

Versions: the first draw of a name is version 1. Drawing again with the same arguments gives the
same members and writes nothing. A different ``size`` with the same rule, seed and filters writes
a new version that keeps the earlier members (growing) or the first ones by rank (shrinking),
then takes the next images of the order; on an unchanged population it equals a fresh draw of
that size. Another rule, seed or filter under an existing name needs ``replace=True`` (a new
version drawn from scratch). Each version's tables are written whole, members last, so a killed
draw leaves no version behind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from exokiratory.core.catalog import Catalog
from exokiratory.core.samples import (
    DISTANCES,
    MEMBERS,
    SAMPLES_SCHEMA,
    STRATA,
    check_sample_name,
    sample_file,
    sample_versions,
)
from exokiratory.core.storage import Storage
from exokiratory.passes.sample import population as popm
from exokiratory.passes.sample.columns import ImageColumns, qi
from exokiratory.passes.sample.ranking import balanced_order, stratified_order, uniform_order
from exokiratory.passes.sample.summary import (
    Grouping,
    cluster_groupings,
    distance_lines,
    strata_lines,
    summarise,
)

log = logging.getLogger(__name__)

RULES = ("balanced", "stratified", "uniform")
SPACES = ("clip", "dino")


@dataclass(frozen=True)
class SampleSpec:
    """Every argument of a draw. ``rule`` None: ``stratified`` with ``by``, else ``balanced``."""

    name: str
    size: int
    rule: str | None = None
    space: str = "clip"
    by: str | None = None
    where: str | None = None
    seed: int = 0
    include_junk: bool = False
    include_duplicates: bool = False
    allocation: str = "equal"  # stratified: equal | proportional

    def resolved(self) -> SampleSpec:
        check_sample_name(self.name)
        if self.size < 1:
            raise ValueError("a sample needs size >= 1")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, not {self.space!r}")
        rule = self.rule or ("stratified" if self.by else "balanced")
        if rule not in RULES:
            raise ValueError(f"rule must be balanced, stratified or uniform, not {rule!r}")
        if rule == "stratified" and not self.by:
            raise ValueError("stratified sampling needs a column: by=COLUMN (--by)")
        if rule != "stratified" and self.by:
            raise ValueError(f"by={self.by!r} goes with the stratified rule, not {rule}")
        if self.allocation not in ("equal", "proportional"):
            raise ValueError("allocation must be 'equal' or 'proportional'")
        return SampleSpec(**{**asdict(self), "rule": rule})

    @property
    def rule_text(self) -> str:
        if self.rule == "balanced":
            return f"balanced:{self.space}"
        if self.rule == "stratified":
            return f"stratified:{self.by}" + (":proportional" if self.allocation != "equal" else "")
        return "uniform"

    def identity(self) -> dict[str, object]:
        """What must match for a new version to keep the earlier members (all but size)."""
        d = asdict(self)
        del d["name"], d["size"]
        return d

    def params_json(self) -> str:
        return json.dumps({**self.identity(), "size": self.size}, sort_keys=True)


@dataclass
class SampleResult:
    name: str
    version: int
    rule: str
    seed: int
    requested: int
    members: pa.Table
    eligible: int
    excluded: dict[str, int]
    kept: int
    written: bool
    strata: pa.Table
    distances: pa.Table
    main_grouping: str
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.members.num_rows

    def summary(self) -> str:
        what = (
            "written" if self.written else "unchanged (same arguments: reproduced, not rewritten)"
        )
        lines = [
            f"sample {self.name!r} v{self.version} {what}: {self.size} images "
            f"({self.requested} asked) of {self.eligible} eligible; rule {self.rule}, "
            f"seed {self.seed}" + (f"; {self.kept} earlier members kept" if self.kept else "")
        ]
        if self.excluded:
            ex = ", ".join(f"{n} {k}" for k, n in self.excluded.items())
            lines.append(f"excluded by default: {ex} (include_junk / include_duplicates keep them)")
        lines += [f"note: {n}" for n in self.notes]
        lines += strata_lines(self.strata, self.main_grouping)
        lines.append("distance of the sample's distribution (TV; KL in nats):")
        lines += distance_lines(self.distances)
        lines.append(
            f"SQL: SELECT * FROM samples WHERE sample = '{self.name}' AND version = {self.version}"
        )
        return "\n".join(lines)


def _order(
    catalog: Catalog, spec: SampleSpec, pop: popm.Population
) -> tuple[np.ndarray, list[str]]:
    """The draw order of the population rows and each row's stratum label."""
    idx = pop.image_idx
    if spec.rule == "uniform":
        return uniform_order(idx, spec.seed), ["all"] * len(idx)
    if spec.rule == "stratified" and spec.by:
        labels = popm.column_strata(catalog, spec.by, pop)
        _, codes = np.unique(np.array(labels, dtype=object), return_inverse=True)
        return stratified_order(idx, codes, spec.seed, spec.allocation), labels
    paths = popm.cluster_paths(catalog, spec.space, pop)
    clustered = (paths >= 0).all(axis=1)
    if not clustered.all():
        pop.notes.append(
            f"{int((~clustered).sum())} eligible images have no {spec.space} cluster yet "
            "(no embedding): left out"
        )
    rows = np.flatnonzero(clustered)
    order = rows[balanced_order(idx[rows], paths[rows], spec.seed)]
    labels = ["/".join(str(c) for c in p) for p in paths.tolist()]
    return order, labels


def _latest(storage: Storage, name: str) -> tuple[int, pa.Table | None]:
    versions = sample_versions(storage, name)
    if not versions:
        return 0, None
    return versions[-1], storage.read_parquet(sample_file(name, MEMBERS, versions[-1]))


def _members(
    spec: SampleSpec,
    pop: popm.Population,
    order: np.ndarray,
    labels: list[str],
    previous: pa.Table | None,
) -> tuple[pa.Table, int]:
    """The members of the new version (ordered by rank) and how many earlier ones it kept."""
    kept: list[dict[str, object]] = []
    if previous is not None:
        prev = previous.sort_by("rank").to_pylist()[: spec.size]
        kept = [
            {"image_id": r["image_id"], "image_idx": r["image_idx"], "stratum": r["stratum"]}
            for r in prev
        ]
    have = {r["image_id"] for r in kept}
    ids = pop.table.column("image_id").to_pylist()
    idxs = pop.table.column("image_idx").to_pylist()
    rows = list(kept)
    for i in order.tolist():
        if len(rows) >= spec.size:
            break
        if ids[i] not in have:
            rows.append({"image_id": ids[i], "image_idx": idxs[i], "stratum": labels[i]})
    n = len(rows)
    table = pa.table(
        {
            "sample": [spec.name] * n,
            "version": pa.array([0] * n, pa.int32()),
            "image_id": [r["image_id"] for r in rows],
            "image_idx": pa.array([r["image_idx"] for r in rows], pa.int64()),
            "rank": pa.array(np.arange(n), pa.int64()),
            "stratum": [r["stratum"] for r in rows],
            "rule": [spec.rule_text] * n,
            "seed": pa.array([spec.seed] * n, pa.int64()),
            "params": [spec.params_json()] * n,
        },
        schema=SAMPLES_SCHEMA,
    )
    return table, len(kept)


def _with_version(members: pa.Table, version: int) -> pa.Table:
    col = members.schema.get_field_index("version")
    return members.set_column(col, "version", pa.array([version] * members.num_rows, pa.int32()))


def _same_members(a: pa.Table, b: pa.Table) -> bool:
    cols = ["image_id", "rank", "stratum", "rule", "seed", "params"]
    return a.select(cols).equals(b.select(cols))


def _groupings(catalog: Catalog, spec: SampleSpec) -> tuple[list[Grouping], str]:
    """The groupings summarised, and the one whose strata are printed."""
    levels = popm.cluster_levels(catalog, spec.space)
    groups = cluster_groupings(spec.space, levels)
    main = groups[0].name if groups else "all"
    if spec.rule == "stratified" and spec.by:
        (col,) = ImageColumns(catalog).resolve([spec.by])
        sel = f"SELECT image_id, {qi(col.name)} AS label FROM ({col.select})"
        groups.insert(0, Grouping(spec.by, sel))
        main = spec.by
    if not groups:
        groups = [Grouping("all", "SELECT image_id, 'all' AS label FROM images")]
    return groups, main


def draw_sample(
    storage: Storage, catalog: Catalog, spec: SampleSpec, *, replace: bool = False
) -> SampleResult:
    """Draw ``spec`` and store it as the next version of its name (see the module docstring)."""
    spec = spec.resolved()
    pop = popm.load_population(catalog, spec.where, spec.include_junk, spec.include_duplicates)
    order, labels = _order(catalog, spec, pop)
    if spec.rule == "balanced":
        note = popm.random_weight_note(catalog, spec.space)
        if note:
            pop.notes.append(note)
    version, previous = _latest(storage, spec.name)
    if previous is not None and previous.num_rows:
        params = json.loads(previous.column("params")[0].as_py())
        params.pop("size", None)
        if params != json.loads(json.dumps(spec.identity())) and not replace:
            raise ValueError(
                f"sample {spec.name!r} v{version} was drawn with other arguments ({params}); "
                "use another name, or replace=True (--replace) for a new version from scratch"
            )
        if params != json.loads(json.dumps(spec.identity())):
            previous = None
    members, kept = _members(spec, pop, order, labels, previous)
    written = previous is None or not _same_members(members, previous)
    if written:
        version += 1
    elif previous is not None:
        members = previous
    members = _with_version(members, version)
    groups, main = _groupings(catalog, spec)
    strata, dists = summarise(catalog, groups, pop.table, members, spec.name, version)
    if written:
        storage.write_parquet_atomic(sample_file(spec.name, STRATA, version), strata)
        storage.write_parquet_atomic(sample_file(spec.name, DISTANCES, version), dists)
        storage.write_parquet_atomic(sample_file(spec.name, MEMBERS, version), members)
    if members.num_rows < spec.size:
        pop.notes.append(f"only {members.num_rows} eligible images: the sample holds them all")
    return SampleResult(
        name=spec.name,
        version=version,
        rule=spec.rule_text,
        seed=spec.seed,
        requested=spec.size,
        members=members,
        eligible=len(order),
        excluded=pop.excluded,
        kept=kept if written else 0,
        written=written,
        strata=strata,
        distances=dists,
        main_grouping=main,
        notes=pop.notes,
    )


def sample_members(catalog: Catalog, name: str, version: int | None = None) -> pa.Table:
    """The members of a stored sample (its newest version by default), ordered by rank."""
    if "samples" not in catalog.views:
        raise ValueError(f"no sample {name!r}: no samples drawn yet (exokiratory sample NAME)")
    if version is None:
        version = catalog.scalar("SELECT max(version) FROM samples WHERE sample = ?", [name])
        if version is None:
            names = [r[0] for r in catalog.rows("SELECT DISTINCT sample FROM samples ORDER BY 1")]
            raise ValueError(f"no sample {name!r}; samples: {', '.join(names)}")
    t = catalog.query(
        "SELECT * FROM samples WHERE sample = ? AND version = ? ORDER BY rank", [name, version]
    )
    if t.num_rows == 0:
        raise ValueError(f"sample {name!r} has no version {version}")
    return t
