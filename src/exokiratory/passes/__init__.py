"""The pass registry: every pass by name, in pipeline order (``run all`` runs them in this order).

Two kinds: unit passes (:class:`Pass`: a function from a batch of units to rows, resumable per
batch) and derivations (:class:`Derivation`: a cheap whole-table function of stored outputs).
"""

from __future__ import annotations

from typing import Any

from exokiratory.engine.step import BatchContext, Derivation, ImagePass, Pass, PassParams
from exokiratory.passes.clusters.step import ClipClustersDerivation, DinoClustersDerivation
from exokiratory.passes.cues.step import CuesPass
from exokiratory.passes.embed.step import ClipEmbedPass, DinoEmbedPass
from exokiratory.passes.flags.step import FlagsDerivation
from exokiratory.passes.motifs.step import MotifsDerivation
from exokiratory.passes.probe.step import ProbePass
from exokiratory.passes.segment.step import SegmentMasksPass
from exokiratory.passes.segment_embed.step import (
    ClipSegmentEmbedPass,
    DinoSegmentEmbedPass,
    SegmentStatsPass,
)
from exokiratory.passes.sense.step import SensePass
from exokiratory.passes.zeroshot.step import ZeroShotDerivation

Step = Pass | Derivation

#: Pass classes in pipeline order.
PASS_CLASSES: tuple[type[Pass] | type[Derivation], ...] = (
    ProbePass,
    SensePass,
    CuesPass,
    FlagsDerivation,
    ClipEmbedPass,
    DinoEmbedPass,
    SegmentMasksPass,
    ZeroShotDerivation,
    ClipClustersDerivation,
    DinoClustersDerivation,
    ClipSegmentEmbedPass,
    DinoSegmentEmbedPass,
    SegmentStatsPass,
    MotifsDerivation,
)

REGISTRY: dict[str, type[Pass] | type[Derivation]] = {cls.name: cls for cls in PASS_CLASSES}

#: names that stand for several passes on the command line
PASS_ALIASES: dict[str, tuple[str, ...]] = {
    "embed": ("embed-clip", "embed-dino"),
    "segment-embed": ("segment-embed-clip", "segment-embed-dino", "segment-stats"),
}


def pass_names() -> list[str]:
    return [cls.name for cls in PASS_CLASSES]


def get_pass(name: str, params: dict[str, Any] | None = None) -> Step:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown pass {name!r}; known passes: {', '.join(pass_names())}"
        ) from None
    return cls(params)


__all__ = [
    "PASS_ALIASES",
    "PASS_CLASSES",
    "REGISTRY",
    "BatchContext",
    "Derivation",
    "ImagePass",
    "Pass",
    "PassParams",
    "Step",
    "get_pass",
]
