"""Flag rules: what a pass family contributes to the routing flags (the ``flags`` derivation).

The flags table is made of blocks of columns, one block per registered :class:`FlagRule`: the
key columns (``image_id``, ``image_idx``), then every rule's columns by the rule's ``order``,
then the provenance columns. A family contributes rules from its ``flag_rules`` module
(``passes/<family>/flag_rules.py``, imported by :func:`discover_flag_rules` and by
:func:`exokiratory.engine.registry.discover`), with the :func:`flag_rule` decorator on a small
pure function. A rule declares:

* ``name`` and ``fields``: its columns (a pyarrow schema fragment, in table order), and
  ``order``: where its block sits in the table (existing blocks use 10..91);
* ``params``: a :class:`PassParams` fragment with its thresholds. They are fields of
  ``passes.flags`` in the config: the flags' parameter model is composed of every rule's
  fragment (:func:`compose_params`). A threshold shared by two rules is declared once, in a
  fragment the other rule's fragment inherits;
* its inputs: ``features`` (PASS 1 columns, joined to every registered image), ``inputs``
  (:class:`FlagInput`: side inputs loaded once per derivation from the catalog, e.g. the
  embeddings), ``needs`` (columns of other rules: those run first), and ``reads`` /
  ``optional_reads`` (the steps whose outputs it reads: the flags derivation's edges in the step
  graph are their union, see :class:`exokiratory.engine.step.Step`);
* the function ``compute(frame, params)``: from a :class:`FlagFrame` to its columns (numpy
  arrays, lists or pyarrow arrays aligned with the rows; a float NaN is stored as null).

Rules run in a topological order of ``needs`` (ties: ``order``, then ``name``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import create_model

from exokiratory.engine.registry import FAMILIES_PACKAGE
from exokiratory.engine.step import PassParams

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

#: a rule's output: column name -> values aligned with the frame's rows
Columns = Mapping[str, Any]
F = TypeVar("F", bound=Callable[..., Columns])

RULES_MODULE = "flag_rules"


@dataclass
class FlagFrame:
    """What a rule function reads: one row per registered image (``image_idx`` order)."""

    #: the joined inputs: ``image_id``, ``image_idx``, ``status``, ``scan_error``,
    #: ``n_paths`` (manifest), ``sense_error`` and the declared PASS 1 ``features``
    table: pa.Table
    #: rows with PASS 1 signals; the flags of the other rows are False (scores null)
    sensed: np.ndarray
    #: side inputs by :attr:`FlagInput.name` (absent when not loaded, e.g. in a pure call)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    #: columns of the rules computed so far, as they returned them
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.table.num_rows

    def num(self, name: str, dtype: type = np.float64) -> np.ndarray:
        """An input column as a numpy array (float64 with NaN for nulls by default)."""
        return self.table.column(name).to_numpy(zero_copy_only=False).astype(dtype)

    def input(self, name: str) -> Any:
        """A side input, or None when it was not loaded."""
        return self.inputs.get(name)

    def __getitem__(self, name: str) -> Any:
        """A column of a rule this one ``needs``."""
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"flag column {name!r} not computed yet: declare it in needs") from None

    def flag(self, score: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """``cond`` as a flag: False where not sensed, the score is not finite, or ``cond`` is
        NaN."""
        return self.sensed & np.nan_to_num(cond, nan=0).astype(bool) & np.isfinite(score)


@dataclass(frozen=True)
class FlagSource:
    """What a side input is loaded from."""

    catalog: Catalog
    #: ``image_id`` of the frame's rows; None for an early input (loaded before they are read)
    ids: pa.ChunkedArray | pa.Array | None
    #: the flags' output folder (caches live under it)
    dataset: str
    #: the flags derivation's input folders (its fingerprint)
    inputs: tuple[str, ...]
    params: PassParams

    def aligned(self, sql: str) -> pa.Table:
        """The rows of ``sql`` (keyed by ``image_id``) in the frame's row order."""
        if self.ids is None:
            raise RuntimeError("an early flag input cannot align rows: they are not read yet")
        return align_rows(self.ids, self.catalog.query(sql))


def align_rows(ids: pa.ChunkedArray | pa.Array, table: pa.Table) -> pa.Table:
    """``table`` (keyed by ``image_id``) re-ordered to ``ids``; null rows where missing."""
    pos = pc.index_in(ids, value_set=table.column("image_id"))
    return table.take(pos)


@dataclass(frozen=True)
class FlagInput:
    """A side input of flag rules, loaded once per derivation (shared by name)."""

    name: str
    load: Callable[[FlagSource], Any]
    #: loaded before the frame's input table is read (:func:`load_inputs` with
    #: ``early=True``): an input that computes something large from its own narrow query (the
    #: near-duplicate groups) then peaks alone, not next to the whole input table
    early: bool = False


@dataclass(frozen=True)
class FlagRule:
    """One block of flag columns and the pure function computing it (see the module doc)."""

    name: str
    fields: tuple[pa.Field, ...]
    compute: Callable[[FlagFrame, Any], Columns]
    order: float
    params: type[PassParams] = PassParams
    features: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    inputs: tuple[FlagInput, ...] = ()
    reads: tuple[str, ...] = ()
    optional_reads: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def run(self, frame: FlagFrame, params: PassParams) -> Columns:
        """Its columns (checked against ``fields``)."""
        out = self.compute(frame, params)
        if set(out) != set(self.columns):
            raise ValueError(
                f"flag rule {self.name!r} returned {sorted(out)}, declared {list(self.columns)}"
            )
        return out


_RULES: dict[str, FlagRule] = {}
_DISCOVERY = {"done": False, "running": False}


def register_flag_rule(rule: FlagRule) -> FlagRule:
    """Make a rule known (names and columns must be unique over all rules)."""
    other = _RULES.get(rule.name)
    if other is not None and other.compute is not rule.compute:
        raise ValueError(f"flag rule {rule.name!r} registered twice")
    for r in _RULES.values():
        clash = set(r.columns) & set(rule.columns)
        if r.name != rule.name and clash:
            raise ValueError(f"flag rules {r.name!r} and {rule.name!r} both write {sorted(clash)}")
    _RULES[rule.name] = rule
    return rule


def flag_rule(
    name: str,
    fields: Sequence[pa.Field],
    order: float,
    **declared: Any,
) -> Callable[[F], F]:
    """Decorator: register the function as the ``compute`` of a :class:`FlagRule` (the other
    keywords are its fields: ``params``, ``features``, ``needs``, ``inputs``, ``reads``,
    ``optional_reads``); the function is returned unchanged."""

    def wrap(fn: F) -> F:
        register_flag_rule(FlagRule(name, tuple(fields), fn, order, **declared))
        return fn

    return wrap


def discover_flag_rules() -> None:
    """Import the ``flag_rules`` module of every family folder (once per process)."""
    if _DISCOVERY["done"] or _DISCOVERY["running"]:
        return
    _DISCOVERY["running"] = True
    try:
        package = importlib.import_module(FAMILIES_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            full = f"{FAMILIES_PACKAGE}.{info.name}.{RULES_MODULE}"
            if info.ispkg and importlib.util.find_spec(full) is not None:
                importlib.import_module(full)
        _DISCOVERY["done"] = True
    finally:
        _DISCOVERY["running"] = False


def flag_rules() -> list[FlagRule]:
    """Every registered rule (after discovery), in computation order."""
    if _DISCOVERY["running"]:
        raise RuntimeError(
            "flag rules asked for while their modules are being imported: a flag_rules "
            "module must not import the flags table (exokiratory.passes.flags.table)"
        )
    discover_flag_rules()
    return compute_order(_RULES.values())


def compute_order(rules: Iterable[FlagRule]) -> list[FlagRule]:
    """``rules`` in a topological order of their ``needs`` (ties: ``order``, ``name``)."""
    todo = sorted(rules, key=lambda r: (r.order, r.name))
    owner = {c: r.name for r in todo for c in r.columns}
    for r in todo:
        missing = [c for c in r.needs if c not in owner]
        if missing:
            raise ValueError(f"flag rule {r.name!r} needs unknown columns {missing}")
    done: set[str] = set()
    order: list[FlagRule] = []
    while todo:
        ready = next((r for r in todo if {owner[c] for c in r.needs} <= done), None)
        if ready is None:
            raise ValueError(
                f"flag rules depend on each other in a cycle: {[r.name for r in todo]}"
            )
        order.append(ready)
        done.add(ready.name)
        todo.remove(ready)
    return order


def table_order(rules: Iterable[FlagRule]) -> list[pa.Field]:
    """The rules' columns in table order (blocks by ``order``, then ``name``)."""
    return [f for r in sorted(rules, key=lambda r: (r.order, r.name)) for f in r.fields]


def compose_params(rules: Iterable[FlagRule], name: str, module: str) -> type[PassParams]:
    """One strict parameter model with every rule's fragment as a base class (a fragment that
    another one inherits is not repeated); a field declared by two unrelated fragments is an
    error."""
    frags = list(dict.fromkeys(r.params for r in rules if r.params is not PassParams))
    bases = tuple(b for b in frags if not any(o is not b and issubclass(o, b) for o in frags))
    _check_unique_fields(bases)
    model = create_model(name, __base__=bases or (PassParams,), __module__=module)
    return cast(type[PassParams], model)


def _check_unique_fields(bases: Sequence[type[PassParams]]) -> None:
    declared: dict[str, type] = {}
    for base in bases:
        for fname in base.model_fields:
            owner = next(c for c in base.__mro__ if fname in inspect.get_annotations(c))
            if declared.setdefault(fname, owner) is not owner:
                raise ValueError(
                    f"flag parameter {fname!r} declared by both {declared[fname].__name__} and "
                    f"{owner.__name__}: declare it once and inherit that fragment"
                )


def load_inputs(
    rules: Iterable[FlagRule], source: FlagSource, early: bool | None = None
) -> dict[str, Any]:
    """Every side input the rules declare, loaded once each (``early``: only those whose
    :attr:`FlagInput.early` is that)."""
    inputs = {i.name: i for r in rules for i in r.inputs if early is None or i.early == early}
    return {name: inp.load(source) for name, inp in inputs.items()}


def feature_columns(rules: Iterable[FlagRule]) -> list[str]:
    """The PASS 1 columns the rules read (each once)."""
    return list(dict.fromkeys(c for r in rules for c in r.features))


def rule_reads(rules: Iterable[FlagRule], optional: bool = False) -> tuple[str, ...]:
    """The steps the rules read (``optional``: those they read when present)."""
    rules = list(rules)
    names = [s for r in rules for s in (r.optional_reads if optional else r.reads)]
    if optional:
        required = {s for r in rules for s in r.reads}
        names = [s for s in names if s not in required]
    return tuple(dict.fromkeys(names))
