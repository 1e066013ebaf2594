"""What the PASS 7 derivations share: explicit view names per table, a notes table that says
what each part computed or why it skipped ("run X first"), and catalog helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from exokiratory.engine.step import Derivation, ParamsT, missing_modules
from exokiratory.passes.synthesis.schemas import NOTES_SCHEMA

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny"

#: what a synthesis step imports: scipy (sparse counts) and scikit-learn (ARI/AMI, SVD) come
#: with scikit-learn; faiss clusters (as for the image clusters and motifs)
SYNTHESIS_MODULES = ("sklearn", "scipy")


@dataclass
class Notes:
    """Rows of a ``*_notes`` table."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def ok(self, part: str, n: int, detail: str = "") -> None:
        self.rows.append({"part": part, "status": "ok", "n": n, "detail": detail or None})

    def skip(self, part: str, detail: str, n: int = 0) -> None:
        self.rows.append({"part": part, "status": "skipped", "n": n, "detail": detail})

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=NOTES_SCHEMA)

    def log_skipped(self, step: str, produced: int) -> None:
        """Say what was skipped (a warning when nothing was produced at all)."""
        level = logging.INFO if produced else logging.WARNING
        for r in self.rows:
            if r["status"] == "skipped":
                log.log(level, "%s: %s skipped: %s", step, r["part"], r["detail"])


class SynthesisDerivation(Derivation[ParamsT]):
    """A derivation whose tables have views of their own names (``table_views``: table name,
    ``""`` for the main one -> view), plus a ``notes`` table."""

    table_views: ClassVar[dict[str, str]]
    stage = 7

    @property
    def view_name(self) -> str:
        return self.table_views[""]

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` once a step it reads is configured (or it is named in the config)."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(SYNTHESIS_MODULES, "synthesis") or missing_modules(("faiss",), "ml")

    def views(self) -> list[str]:
        return list(self.table_views.values())

    def define_views(self, catalog: Catalog) -> None:
        from exokiratory.core.dataset import current_folder

        folder = current_folder(catalog.storage, self.dataset) or f"{self.dataset}/.none"
        for name, schema in {"": self.output_schema(), **self.extra_schemas()}.items():
            rel = folder + (f"/{name}" if name else "")
            catalog.define_table_view(self.table_views[name], rel, schema)

    def derive(self, catalog: Catalog) -> pa.Table:
        return self.derive_outputs(catalog)[""]

    def output_folder(self, catalog: Catalog) -> str:
        """The folder this derivation's output is being written to (for side files)."""
        from exokiratory.engine.derive import input_fingerprint

        return f"{self.dataset}/{self.full_version}-{input_fingerprint(catalog.storage, self)}"


def has_rows(catalog: Catalog, view: str, where: str = "") -> bool:
    """Whether ``view`` exists in the catalog and has a row (matching ``where``)."""
    if view not in catalog.views:
        return False
    return bool(catalog.scalar(f'SELECT EXISTS (SELECT 1 FROM "{view}" {where})'))


def has_column(catalog: Catalog, view: str, column: str) -> bool:
    if view not in catalog.views:
        return False
    cols = catalog.query(f'SELECT * FROM "{view}" LIMIT 0').column_names
    return column in cols


def random_weight_models(catalog: Catalog, views: tuple[str, ...]) -> list[str]:
    """The random-weight (``tiny``) model ids recorded in the ``model_id`` of ``views``."""
    out: set[str] = set()
    for v in views:
        if has_column(catalog, v, "model_id"):
            rows = catalog.rows(
                f'SELECT DISTINCT model_id FROM "{v}" WHERE starts_with(model_id, ?)',
                [TINY_PREFIX],
            )
            out.update(str(r[0]) for r in rows)
    return sorted(out)
