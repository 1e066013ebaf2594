"""The step registry and its dependency graph.

Every step class registers itself with :func:`register` (a class decorator) in its family's
``step`` module; :func:`discover` imports the registration modules of every family folder under
:mod:`exokiratory.passes`, so adding a pass is one new folder and one decorator. The graph's
edges are the steps' declared ``reads``: the order of ``run all`` is a topological order of it
(among the steps that are ready: the seed's pass number ``stage`` first, then CPU before
GPU, then by name), and a derivation is
re-derived after any step it reads, or optionally reads, produced new rows
(:func:`downstream_derivations`).
"""

from __future__ import annotations

import heapq
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable
from typing import Any, TypeVar

from exokiratory.engine.step import Derivation, Resource, Step

S = TypeVar("S", bound=type[Step[Any]])

#: modules of a family folder that register something, imported by :func:`discover` when
#: present: its steps, and (optionally) its flag rules and report section
FAMILY_MODULES: tuple[str, ...] = ("step", "flag_rules", "section")
FAMILIES_PACKAGE = "exokiratory.passes"

_STEPS: dict[str, type[Step[Any]]] = {}
_ALIASES: dict[str, tuple[str, ...]] = {}
_DISCOVERED = False


class UnknownStepError(ValueError):
    """A step name that is neither registered nor an alias."""


def register(cls: S) -> S:
    """Class decorator: make a step known by its ``name`` (checked for duplicates)."""
    name = cls.name
    other = _STEPS.get(name)
    if other is not None and other is not cls:
        raise ValueError(f"step name {name!r} registered twice: {other} and {cls}")
    _STEPS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget a step (a plugin unloaded, a test's example step); unknown names are ignored."""
    _STEPS.pop(name, None)


def register_alias(alias: str, members: tuple[str, ...]) -> None:
    """A command-line name that stands for several steps (``embed`` = both embedding passes)."""
    _ALIASES[alias] = members


def discover() -> None:
    """Import the registration modules of every family folder (once per process)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module(FAMILIES_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        for module in FAMILY_MODULES:
            full = f"{FAMILIES_PACKAGE}.{info.name}.{module}"
            if importlib.util.find_spec(full) is not None:
                importlib.import_module(full)
    _DISCOVERED = True
    _check_edges()


def _check_edges() -> None:
    for cls in _STEPS.values():
        for dep in (*cls.reads, *cls.optional_reads):
            if dep not in _STEPS:
                raise ValueError(f"step {cls.name!r} reads unknown step {dep!r}")


def steps() -> dict[str, type[Step[Any]]]:
    """Every registered step class by name, in run order."""
    discover()
    return {n: _STEPS[n] for n in run_order(_STEPS)}


def aliases() -> dict[str, tuple[str, ...]]:
    discover()
    return dict(_ALIASES)


def known_names() -> list[str]:
    """Step names in run order, then the aliases and ``all`` (for error messages)."""
    return [*steps(), *sorted(aliases()), "all"]


def step_class(name: str) -> type[Step[Any]]:
    discover()
    try:
        return _STEPS[name]
    except KeyError:
        raise UnknownStepError(
            f"unknown pass {name!r}; known: {', '.join(known_names())}"
        ) from None


def expand(names: Iterable[str]) -> list[str]:
    """Names with aliases replaced by their members (``all`` is kept)."""
    al = aliases()
    return [n for name in names for n in al.get(name, (name,))]


def run_order(names: Iterable[str]) -> list[str]:
    """``names`` in a topological order of the ``reads`` graph (Kahn's algorithm; among the
    steps that are ready: lower ``stage``, then CPU before GPU, then by name)."""
    wanted = set(names)
    indegree = {n: 0 for n in _STEPS}
    children: dict[str, list[str]] = {n: [] for n in _STEPS}
    for cls in _STEPS.values():
        for dep in cls.reads:
            indegree[cls.name] += 1
            children[dep].append(cls.name)
    ready = [_rank(n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)[-1]
        order.append(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, _rank(child))
    if len(order) != len(_STEPS):
        cycle = sorted(set(_STEPS) - set(order))
        raise ValueError(f"the reads graph has a cycle among {cycle}")
    return [n for n in order if n in wanted]


def _rank(name: str) -> tuple[int, bool, str]:
    cls = _STEPS[name]
    return (cls.stage, cls.resources is Resource.GPU, name)


def downstream_derivations(changed: Iterable[str]) -> list[str]:
    """Derivations that read (or optionally read) any of ``changed``, directly or through
    other derivations, in run order: what to re-derive after those steps wrote new rows."""
    discover()
    todo, seen = list(changed), set()
    while todo:
        name = todo.pop()
        for cls in _STEPS.values():
            if (
                issubclass(cls, Derivation)
                and cls.name not in seen
                and name in (*cls.reads, *cls.optional_reads)
            ):
                seen.add(cls.name)
                todo.append(cls.name)
    return run_order(seen)


def pass_names() -> list[str]:
    """Every registered step name, in run order."""
    return list(steps())


def get_pass(name: str, params: dict[str, Any] | None = None) -> Step[Any]:
    """A step by name, configured with ``params`` (``passes.<name>`` of the config)."""
    return step_class(name)(params)
