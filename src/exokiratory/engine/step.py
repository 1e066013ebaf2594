"""The step contract: one small base class per kind of step (datatrove style).

Two kinds of step, both declared once and registered with :func:`exokiratory.engine.registry.register`:

* :class:`Pass` (and :class:`ImagePass`): units in, one keyed Parquet dataset out, one part file
  per batch, resumable per batch. It implements one function from a batch of units to a table;
  runners and executors live elsewhere (:mod:`exokiratory.engine`), a pass never writes files.
* :class:`Derivation`: a cheap whole-table function of stored outputs (flags, clusters...),
  written as a new folder and made current by an atomic pointer.

What every step declares (class attributes), and the hooks the engine calls, in one place:

=========================  =====================================================================
``name``                   the CLI name (``embed-clip``)
``dataset`` / ``version``  output folder (relative to the workspace) and its version
``Params``                 a :class:`PassParams` model for ``passes.<name>`` in the config; the
                           step is generic in it (``class EmbedPass(ImagePass[EmbedParams])``)
                           so ``self.params`` is typed without casts
``reads``                  names of the steps whose outputs it reads: they run before it in
                           ``run all`` and their output folders are part of a derivation's input
                           fingerprint (``run all`` order is computed from these edges)
``optional_reads``         read when present but not ordered before it (they may read this
                           step: flags route the images the embeddings are computed for, then
                           use the embeddings); a derivation is re-derived after they change
``stage``                  the seed's PASS number (0 manifest/decode check, 1 global sensing
                           and embeddings, 2 routing, 3 segments, 4 segment embeddings and
                           motifs, 5 language...): only breaks ties between steps that are
                           ready at the same time in ``run all``; the ``reads`` edges decide
``resources``              :class:`Resource`: ``CPU`` (process pools, any number per machine)
                           or ``GPU`` (one model per process: in-process locally, one actor per
                           GPU on Ray; models released after the pass)
``views()``                names of the catalog views it defines (its ``writes`` in the graph)
``define_views(cat)``      defines them (keyed part-dataset view, derived folders, extra SQL)
``bind_workspace(url)``    hook: the workspace URL (model caches live under it)
``route_all_images()``     hook: a routed step (params derive from :class:`RoutedParams`) takes
                           every readable image this run instead of ``images_routed``
``in_all(configured)``     whether ``run all`` includes it (``configured``: named in the config,
                           or, for a CPU step, one of the steps it reads is)
``missing_requirement()``  why it cannot run here (an extra not installed), or None
=========================  =====================================================================

Output record contract of a pass: the output table has the key columns, every column of
:meth:`Pass.output_schema`, one row per input unit, and an ``error`` column (null when the unit
succeeded). Rows must be a pure function of the unit and the pass parameters (no wall-clock
values), so that any executor, and any rerun after a kill, produces byte-identical tables.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar, cast

import fsspec
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from exokiratory.core.paths import from_stored
from exokiratory.engine.threads import in_threads

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)


def missing_modules(modules: Sequence[str], extra: str) -> str | None:
    """A ``missing_requirement`` message when any of ``modules`` cannot be imported here
    (checked without importing them), naming the extra that installs them; else None."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {' and '.join(missing)}: pip install 'exokiratory[{extra}]'"
    return None


#: what a model pass imports (``missing_modules(MODEL_MODULES, "ml")``)
MODEL_MODULES: tuple[str, ...] = ("torch", "transformers")


class Resource(enum.Enum):
    """What a step runs on: decides the executor (see :class:`Step`)."""

    CPU = "cpu"
    GPU = "gpu"


class PassSetupError(RuntimeError):
    """A pass cannot run at all (e.g. its model cannot be loaded): the batch fails as a whole,
    without the unit-by-unit retry, and the run stops that pass."""


class PassParams(BaseModel):
    """Parameters of a pass, from ``passes.<name>`` in the workspace config. Strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: the embedding spaces a step can read (global and segment embeddings, clusters, motifs)
EMBEDDING_SPACES = ("clip", "dino")


def _known_spaces(v: tuple[str, ...]) -> tuple[str, ...]:
    bad = [s for s in v if s not in EMBEDDING_SPACES]
    if bad:
        raise ValueError(f"unknown space(s) {bad}; use clip and/or dino")
    return v


#: a parameter naming embedding spaces (``clip``, ``dino``); anything else is an error naming it
Spaces = Annotated[tuple[str, ...], AfterValidator(_known_spaces)]


class RoutedParams(PassParams):
    """Parameters of a step that works on the routed images (``images_routed``: readable, not
    junk, canonical) unless told otherwise; :meth:`Step.route_all_images` is its hook."""

    routed_only: bool = True


ParamsT = TypeVar("ParamsT", bound=PassParams)


def validate_params(
    name: str, model: type[PassParams], params: dict[str, Any] | None
) -> PassParams:
    """Validate ``passes.<name>`` from the config; errors name the key and the problem."""
    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"passes.{name}: {problems}") from exc


@dataclass(frozen=True)
class BatchContext:
    """What a batch function may use besides its units (picklable, sent to every worker)."""

    workspace_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_image_pixels: int = 178_956_970
    source_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def read_bytes(self, path: str, source: str | None = None) -> bytes:
        """The bytes of an image file, opened with its source's storage options."""
        opts = self.source_options.get(source or "", {})
        if not opts:
            for src, o in self.source_options.items():
                if path.startswith(src.rstrip("/") + "/"):
                    opts = o
                    break
        with fsspec.open(from_stored(path), "rb", **opts) as fh:
            data: bytes = fh.read()
        return data


class Step(ABC, Generic[ParamsT]):
    """What passes and derivations share: identity, parameters, graph edges, hooks (see the
    module docstring for every attribute and hook)."""

    name: ClassVar[str]
    #: folder of the output dataset, relative to the workspace
    dataset: ClassVar[str]
    #: bump when the output for the same input changes (new model, new parameters...)
    version: ClassVar[str]
    Params: ClassVar[type[PassParams]] = PassParams
    description: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resource] = Resource.CPU
    stage: ClassVar[int] = 9

    def __init__(self, params: dict[str, Any] | None = None):
        self.params: ParamsT = cast(ParamsT, validate_params(self.name, self.Params, params))
        self.workspace_url: str | None = None

    # -- hooks -------------------------------------------------------------------------------
    def bind_workspace(self, url: str) -> None:
        """The workspace this step runs for (model caches live under it)."""
        self.workspace_url = url

    @property
    def is_routed(self) -> bool:
        """Whether it works on ``images_routed`` only (see :class:`RoutedParams`)."""
        return isinstance(self.params, RoutedParams) and self.params.routed_only

    def route_all_images(self) -> None:
        """Take every readable image this run, not only the routed ones (``run --all``)."""
        if isinstance(self.params, RoutedParams):
            self.params = cast(ParamsT, self.params.model_copy(update={"routed_only": False}))

    def in_all(self, configured: bool) -> bool:
        """Whether ``run all`` includes this step (``configured``: it has a config section,
        or a CPU step reads a step that has one)."""
        return True

    def missing_requirement(self) -> str | None:
        """Why this step cannot run in this environment (e.g. an extra not installed), or None."""
        return None

    # -- outputs -----------------------------------------------------------------------------
    @property
    def view_name(self) -> str:
        return self.name.replace("-", "_")

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """Schema of the main output table."""

    @abstractmethod
    def views(self) -> list[str]:
        """Names of the catalog views this step defines (what it writes, in the graph)."""

    @abstractmethod
    def define_views(self, catalog: Catalog) -> None:
        """Define :meth:`views` in ``catalog`` (whether or not the data exists yet)."""


class Pass(Step[ParamsT]):
    """One pass: units in, one keyed Parquet dataset out."""

    key: ClassVar[tuple[str, ...]] = ("image_id",)
    #: columns of a unit of work, when a unit gives several rows (e.g. one image, many
    #: segments keyed ``(image_id, mask_index)``); empty: the same as ``key``. Such a pass
    #: writes every unit's rows in one part and exposes :attr:`done_view` (one row per unit)
    unit_key: ClassVar[tuple[str, ...]] = ()

    @property
    def units_key(self) -> tuple[str, ...]:
        """Key of a unit of work (the planner's anti-join): ``unit_key`` or ``key``."""
        return self.unit_key or self.key

    @property
    def done_view(self) -> str:
        """View with one row per processed unit (``units_key`` columns and ``error``)."""
        return self.view_name

    def extra_views(self) -> dict[str, str]:
        """More catalog views over :attr:`view_name` (name -> SELECT), defined after it."""
        return {}

    def views(self) -> list[str]:
        return [self.view_name, *self.extra_views()]

    def define_views(self, catalog: Catalog) -> None:
        catalog.define_keyed_view(self.view_name, self.output_rel, self.output_schema(), self.key)
        for name, sql in self.extra_views().items():
            catalog.define_view(name, sql)

    @property
    def full_version(self) -> str:
        """``version``, plus a digest of the parameters when they differ from the defaults, so
        that changed parameters write a new dataset instead of mixing rows."""
        changed = self.params.model_dump(exclude_defaults=True)
        if not changed:
            return self.version
        text = json.dumps(changed, sort_keys=True, default=str)
        return f"{self.version}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @property
    def output_rel(self) -> str:
        return f"{self.dataset}/{self.full_version}"

    #: SQL over the catalog's views selecting every unit this pass wants, with the key columns,
    #: in a deterministic order.
    units_sql: ClassVar[str]

    def units(self, catalog: Catalog) -> pa.Table:
        """Every unit this pass wants (the result of :attr:`units_sql`)."""
        return catalog.query(self.units_sql)

    @abstractmethod
    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        """Compute the output rows for a batch of units."""

    def lookahead(self, units: pa.Table | None) -> None:
        """The units of the batch this process will run next (None: this is the last one), told
        by an executor that runs batches one after another, so a pass may start reading them
        early. Rows must not depend on it. Default: ignored."""
        return None

    def release(self) -> None:
        """Free what the pass holds between batches (threads, buffers). Default: nothing."""
        return None

    def error_rows(self, units: pa.Table, message: str) -> pa.Table:
        """Rows that record a failure for each unit (key columns plus ``error``)."""
        schema = self.output_schema()
        cols = {}
        for f in schema:
            if f.name in units.column_names:
                cols[f.name] = units.column(f.name).cast(f.type)
            elif f.name == "error":
                cols[f.name] = pa.array([message] * units.num_rows, f.type)
            else:
                cols[f.name] = pa.nulls(units.num_rows, f.type)
        return pa.table(cols, schema=schema)


IMAGE_UNITS_SQL = """
SELECT i.image_id, i.image_idx, i.format, i.size_bytes, p.path, p.source
FROM images i
JOIN image_paths p
  USING (image_id)
WHERE i.status = 'ok'
ORDER BY i.image_idx
"""


class ImagePass(Pass[ParamsT]):
    """A pass over images, one independent row per image.

    Subclasses implement :meth:`process_image`; a failure of one image becomes that image's
    ``error`` row and never stops the batch.
    """

    #: readable images (status ok) with one present path each, in ``image_idx`` order
    units_sql = IMAGE_UNITS_SQL

    @abstractmethod
    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        """Output columns (without keys and error) for one image; ``unit["data"]`` holds the
        file's bytes (already read, possibly ahead of time by a thread)."""

    #: image files read ahead by threads while the current one is processed, for remote
    #: sources (S3, GCS...: latency-bound); local and mounted files are read inline; 0 = never
    prefetch: ClassVar[int] = 4

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        rows = []
        names = self.output_schema().names
        for unit, data in self._with_bytes(units.to_pylist(), ctx):
            try:
                if isinstance(data, BaseException):
                    raise data
                unit["data"] = data
                out = self.process_image(unit, ctx)
                out["error"] = None
            except Exception as exc:  # a bad image is a row, never a crash
                unit_key = tuple(unit.get(k) for k in self.key)
                log.debug("unit %s failed in %s: %s", unit_key, self.name, exc)
                out = {"error": f"{type(exc).__name__}: {exc}"}
            for k in self.key:
                out[k] = unit[k]
            if "image_idx" in names:
                out["image_idx"] = unit["image_idx"]
            rows.append(out)
        return pa.Table.from_pylist(rows, schema=self.output_schema())

    def _with_bytes(
        self, units: list[dict[str, Any]], ctx: BatchContext
    ) -> Iterator[tuple[dict[str, Any], bytes | BaseException]]:
        """Each unit with its file's bytes (or the read error), at most ``prefetch`` ahead."""

        def read(u: dict[str, Any]) -> bytes | BaseException:
            try:
                return ctx.read_bytes(u["path"], u.get("source"))
            except Exception as exc:
                return exc

        remote = any("://" in u["path"] and not u["path"].startswith("file://") for u in units)
        if self.prefetch <= 0 or len(units) < 2 or not remote:  # local reads: threads only cost
            for u in units:
                yield u, read(u)
            return
        yield from zip(units, in_threads(read, units, self.prefetch), strict=True)


class Derivation(Step[ParamsT]):
    """A derived dataset: a cheap, whole-table function of stored outputs (flags, clusters...).

    Derivations never decode images. Their output is written as a new folder named by the
    version, the parameters and a fingerprint of the inputs, then made current by an atomic
    pointer (``CURRENT.json``). Same inputs and parameters: nothing to do. A kill before the
    pointer moves leaves the previous output current; the rerun recomputes (seconds). The
    inputs are the manifests and the outputs of every step in ``reads`` and
    ``optional_reads`` (set by :meth:`bind`).
    """

    def __init__(self, params: dict[str, Any] | None = None):
        super().__init__(params)
        self.inputs: tuple[str, ...] = ("manifests/images", "manifests/paths")
        self.derived_inputs: tuple[str, ...] = ()

    def bind(self, steps: Sequence[Step[Any]]) -> None:
        """Learn the output folders of the configured steps it reads (input fingerprint): the
        part folders of passes, and the datasets of derivations (whose current pointer is
        read at fingerprint time)."""
        names = set(self.reads) | set(self.optional_reads)
        self.inputs = (
            "manifests/images",
            "manifests/paths",
            *(s.output_rel for s in steps if s.name in names and isinstance(s, Pass)),
        )
        self.derived_inputs = tuple(
            s.dataset for s in steps if s.name in names and isinstance(s, Derivation)
        )

    def extra_views(self) -> dict[str, str]:
        """More catalog views (name -> SELECT), defined after the derived tables; only when
        an output exists (they may reference its columns)."""
        return {}

    def views(self) -> list[str]:
        tables = [self.view_name + (f"_{n}" if n else "") for n in ("", *self.extra_schemas())]
        return [*tables, *self.extra_views()]

    def define_views(self, catalog: Catalog) -> None:
        from exokiratory.core.dataset import current_folder

        current = current_folder(catalog.storage, self.dataset)
        folder = current or f"{self.dataset}/.none"
        for name, schema in {"": self.output_schema(), **self.extra_schemas()}.items():
            view = self.view_name + (f"_{name}" if name else "")
            catalog.define_table_view(view, folder + (f"/{name}" if name else ""), schema)
        if current is not None:
            for name, sql in self.extra_views().items():
                catalog.define_view(name, sql)

    def extra_fingerprint(self, storage: Storage) -> str:
        """Inputs that are not pass outputs (e.g. a prompt registry's content), as text that
        changes whenever they do; part of the input fingerprint. Default: none."""
        return ""

    @property
    def full_version(self) -> str:
        return self.version

    @property
    def output_rel(self) -> str:
        return self.dataset

    def params_json(self) -> str:
        return json.dumps(self.params.model_dump(mode="json"), sort_keys=True)

    @abstractmethod
    def derive(self, catalog: Catalog) -> pa.Table:
        """The whole derived table, computed from the catalog's views."""

    def extra_schemas(self) -> dict[str, pa.Schema]:
        """Schemas of further tables written beside the main one (``<folder>/<name>/``, view
        ``<view_name>_<name>``), e.g. per-cluster summaries next to per-image assignments."""
        return {}

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        """The main table (key ``""``) and every table of :meth:`extra_schemas`. Override this
        instead of :meth:`derive` when the tables come from one computation."""
        return {"": self.derive(catalog)}
