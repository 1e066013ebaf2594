"""The verdict: stop, or continue naming the pass whose next run is most likely to change
something, and why. :func:`measure` is the one function behind ``exokiratory stop``,
``Workspace.stop()`` and the report's panel.

Rule: every criterion met -> ``stop``. Otherwise ``continue``: the first criterion *not met*
(in the seed's order: topology, segments, language, outliers) names the pass whose last run moved
it (its next run is the most likely to move it again); without one, the first criterion with
*insufficient data* names the pass to run to measure it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from exokiratory.core.storage import Storage
from exokiratory.passes.stop import language, outliers, segments, topology
from exokiratory.passes.stop.base import (
    INSUFFICIENT,
    NOT_MET,
    PARAMS_VERSION,
    Criterion,
    StopParams,
    clean,
    fmt,
    stop_params,
)
from exokiratory.passes.stop.history import History

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

#: the views whose random-weight rows make each criterion's numbers plumbing
MODEL_INPUTS = {
    "topology": ("embeddings_clip", "embeddings_dino"),
    "segments": ("segment_embeddings_clip", "segment_embeddings_dino"),
    "language": ("captions", "caption_embeddings"),
    "outliers": ("embeddings_clip", "embeddings_dino", "segment_embeddings_clip"),
}


@dataclass
class Verdict:
    decision: str  # "stop" | "continue"
    run: str | None
    why: str
    criterion: str | None = None


@dataclass
class StopResult:
    """The four criteria, the verdict, and where they come from."""

    criteria: list[Criterion]
    verdict: Verdict
    params: dict[str, Any]
    params_version: str = PARAMS_VERSION
    snapshots: int = 0
    latest: str | None = None
    recorded: str | None = None
    pending: list[str] = field(default_factory=list)
    random_weight: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("criteria", "verdict")}
        return clean(
            {
                "criteria": [c.to_dict() for c in self.criteria],
                "verdict": asdict(self.verdict),
                **out,
            }
        )

    def rows(self) -> list[dict[str, str]]:
        """One line per criterion, as text (the CLI table, the report's summary)."""
        return [
            {
                "criterion": c.name,
                "value": fmt(c.value),
                "threshold": fmt(c.threshold),
                "state": c.state,
                "why": c.why,
            }
            for c in self.criteria
        ]


def decide(criteria: Sequence[Criterion]) -> Verdict:
    """See the module docstring."""
    for state in (NOT_MET, INSUFFICIENT):
        c = next((c for c in criteria if c.state == state), None)
        if c is not None:
            return Verdict("continue", c.run, f"{c.name}: {c.why}", c.name)
    return Verdict(
        "stop",
        None,
        "all four criteria are met: further passes of these kinds are unlikely to change the "
        "structure; anything beyond that is indulgence",
    )


def evaluate(history: History, p: StopParams, pending: Sequence[str] = ()) -> StopResult:
    """The criteria and the verdict of a history (pure: reads only the snapshots)."""
    criteria = [
        topology.evaluate(history, p, pending),
        segments.evaluate(history, p, pending),
        language.evaluate(history, p, pending),
        outliers.evaluate(history, p, pending),
    ]
    latest = history.latest
    tiny: dict[str, list[str]] = dict(latest.metrics.get("random_weight", {})) if latest else {}
    for c in criteria:
        models = sorted({m for v in MODEL_INPUTS[c.name] for m in tiny.get(v, [])})
        if models and c.state != INSUFFICIENT:
            c.notes.append(
                f"computed from RANDOM-WEIGHT (tiny) model outputs ({', '.join(models)}): "
                "plumbing, not meaning"
            )
    if history.n_other_settings:
        criteria[0].notes.append(
            f"{history.n_other_settings} snapshot(s) taken with other settings are not compared"
        )
    return StopResult(
        criteria,
        decide(criteria),
        p.model_dump(),
        snapshots=len(history.snapshots),
        latest=latest.name if latest else None,
        pending=list(pending),
        random_weight=tiny,
    )


def measure(
    storage: Storage,
    config: Mapping[str, Any] | None,
    *,
    catalog: Catalog | None = None,
    pending: Sequence[str] = (),
) -> StopResult:
    """The stop condition of a workspace. With ``catalog``, the current structure is first
    recorded if it differs from the newest snapshot (a change made outside ``run``, or a run
    killed between a step and its snapshot). ``pending``: passes with units left, in run
    order (named first when a criterion lacks data)."""
    p = stop_params(config)
    recorded = None
    if catalog is not None:
        from exokiratory.passes.stop.snapshot import record_snapshot

        info = record_snapshot(storage, catalog, p, trigger="stop")
        recorded = info.name if info is not None else None
    result = evaluate(History(storage, p.snapshot_digest()), p, pending)
    result.recorded = recorded
    return result


def pending_passes(status: Any) -> list[str]:
    """The passes that started and have units left (a workspace status), in run order."""
    if status is None:
        return []
    return [p.name for p in status.passes if (p.done or p.failed) and p.remaining]
