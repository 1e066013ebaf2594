"""Base classes for passes: one small class per kind of step (datatrove style).

A pass declares its name, the units it consumes, its output dataset and schema, and a version; it
implements one function from a batch of units to a table. Runners and executors live elsewhere
(:mod:`exokiratory.engine`); a pass never writes files itself.

Output record contract: the output table has the key columns, every column of
:meth:`Pass.output_schema`, one row per input unit, and an ``error`` column (null when the unit
succeeded). Rows must be a pure function of the unit and the pass parameters (no wall-clock
values), so that any executor, and any rerun after a kill, produces byte-identical tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import fsspec
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def missing_modules(modules: Sequence[str], extra: str) -> str | None:
    """A ``missing_requirement`` message when any of ``modules`` cannot be imported here
    (checked without importing them), naming the extra that installs them; else None."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {' and '.join(missing)}: pip install 'exokiratory[{extra}]'"
    return None


#: what a model pass imports (``missing_modules(MODEL_MODULES, "ml")``)
MODEL_MODULES: tuple[str, ...] = ("torch", "transformers")


def ordered_results(
    submit: Callable[[T], Future[R]],
    items: Iterable[T],
    ahead: int,
    on_all_submitted: Callable[[], None] | None = None,
) -> Iterator[R]:
    """The results of ``submit(item)`` for each item, in order, with at most ``ahead`` submitted
    and not yet consumed (bounded memory, unlike ``Executor.map``); ``on_all_submitted`` runs
    once the last item is submitted (to queue follow-up work behind it)."""
    pending: deque[Future[R]] = deque()
    it = iter(items)
    done_submitting = False
    while True:
        while not done_submitting and len(pending) < ahead:
            item = next(it, _END)
            if item is _END:
                done_submitting = True
                if on_all_submitted is not None:
                    on_all_submitted()
                break
            pending.append(submit(item))  # type: ignore[arg-type]
        if not pending:
            return
        yield pending.popleft().result()


_END = object()


def in_threads(fn: Callable[[T], R], items: Sequence[T], threads: int) -> Iterator[R]:
    """``fn`` of each item, in order, computed by ``threads`` (>= 1) threads at most
    ``2 x threads`` items ahead of the consumer; a single item is computed in the caller's
    thread."""
    if len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="exo-read") as pool:
        yield from ordered_results(lambda item: pool.submit(fn, item), items, 2 * threads)


class PassSetupError(RuntimeError):
    """A pass cannot run at all (e.g. its model cannot be loaded): the batch fails as a whole,
    without the unit-by-unit retry, and the run stops that pass."""


class PassParams(BaseModel):
    """Parameters of a pass, from ``passes.<name>`` in the workspace config. Strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
        with fsspec.open(path, "rb", **opts) as fh:
            data: bytes = fh.read()
        return data


class Pass(ABC):
    """One pass: units in, one keyed Parquet dataset out."""

    name: ClassVar[str]
    #: folder of the output dataset, relative to the workspace; the version is appended
    dataset: ClassVar[str]
    #: bump when the output for the same input changes (new model, new parameters...)
    version: ClassVar[str]
    key: ClassVar[tuple[str, ...]] = ("image_id",)
    #: columns of a unit of work, when a unit gives several rows (e.g. one image, many
    #: segments keyed ``(image_id, mask_index)``); empty: the same as ``key``. Such a pass
    #: writes every unit's rows in one part and exposes :attr:`done_view` (one row per unit)
    unit_key: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[str] = "cpu"
    depends_on: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[PassParams]] = PassParams
    description: ClassVar[str] = ""

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = validate_params(self.name, self.Params, params)

    @property
    def view_name(self) -> str:
        return self.name.replace("-", "_")

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

    def missing_requirement(self) -> str | None:
        """Why this pass cannot run in this environment (e.g. an extra not installed), or None."""
        return None

    def in_all(self, configured: bool) -> bool:
        """Whether ``run all`` includes this pass (``configured``: it has a config section)."""
        return True

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

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """Schema of the output table (key columns and ``error`` included)."""

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
JOIN (SELECT image_id, min(path) AS path, arg_min(source, path) AS source
      FROM paths WHERE status = 'image' GROUP BY image_id) p
  USING (image_id)
WHERE i.status = 'ok'
ORDER BY i.image_idx
"""


class ImagePass(Pass):
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
                log.debug("image %s failed in %s: %s", unit["image_id"], self.name, exc)
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


class Derivation(ABC):
    """A derived dataset: a cheap, whole-table function of stored outputs (flags, clusters...).

    Derivations never decode images. Their output is written as a new folder named by the
    version, the parameters and a fingerprint of the inputs, then made current by an atomic
    pointer (``CURRENT.json``). Same inputs and parameters: nothing to do. A kill before the
    pointer moves leaves the previous output current; the rerun recomputes (seconds).
    """

    name: ClassVar[str]
    dataset: ClassVar[str]
    version: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: names of the unit passes whose outputs this derivation reads
    reads: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[PassParams]] = PassParams
    description: ClassVar[str] = ""

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = validate_params(self.name, self.Params, params)
        self.inputs: tuple[str, ...] = ("manifests/images", "manifests/paths")

    def bind(self, passes: Sequence[Pass]) -> None:
        """Learn the output folders of the configured passes it reads (input fingerprint)."""
        self.inputs = (
            "manifests/images",
            "manifests/paths",
            *(p.output_rel for p in passes if p.name in self.reads),
        )

    @property
    def view_name(self) -> str:
        return self.name.replace("-", "_")

    def in_all(self, configured: bool) -> bool:
        return True

    def missing_requirement(self) -> str | None:
        """Why this derivation cannot run in this environment, or None."""
        return None

    def extra_fingerprint(self, storage: Storage) -> str:
        """Inputs that are not pass outputs (e.g. a prompt registry's content), as text that
        changes whenever they do; part of the input fingerprint. Default: none."""
        return ""

    @property
    def full_version(self) -> str:
        return self.version

    def params_json(self) -> str:
        return json.dumps(self.params.model_dump(mode="json"), sort_keys=True)

    @abstractmethod
    def output_schema(self) -> pa.Schema: ...

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
