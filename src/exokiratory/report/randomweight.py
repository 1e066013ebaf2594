"""Which random-weight (``tiny``) models stand behind a section of the report.

A section shows views (its ``needs``); the steps that write them read other steps' outputs (the
registry's ``reads`` graph: clusters read embeddings, captions read clusters and motifs...). The
models behind a section are the random-weight model ids recorded in the rows of every view
written by those steps and by what they read, transitively. ``flags`` is not followed: the model
passes read it only for routing (``images_routed``), not for the numbers they compute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from exokiratory.engine import registry
from exokiratory.engine.sections import producers_of, view_matches

#: steps read only for routing: their outputs do not carry into the reader's numbers
ROUTING_ONLY = frozenset({"flags"})


def upstream_steps(names: Iterable[str]) -> list[str]:
    """``names`` and every step they read (transitively), stopping at routing-only steps."""
    known = registry.steps()
    seen: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.append(name)
        cls = known[name]
        todo += [d for d in (*cls.reads, *cls.optional_reads) if d not in ROUTING_ONLY]
    return seen


def models_behind(
    patterns: Sequence[str],
    random_weight: Mapping[str, Sequence[str]],
    step_views: Mapping[str, Sequence[str]],
) -> tuple[str, ...]:
    """The random-weight model ids behind views matching ``patterns`` (sorted, unique)."""
    if not random_weight or not patterns:
        return ()
    views = {v for v in random_weight if any(view_matches(v, p) for p in patterns)}
    producers = [s for s in producers_of(patterns, step_views) if s not in ROUTING_ONLY]
    for step in upstream_steps(producers):
        views.update(step_views.get(step, ()))
    return tuple(sorted({m for v in views for m in random_weight.get(v, ())}))
