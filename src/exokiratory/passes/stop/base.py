"""What every criterion shares: the thresholds (``passes.stop`` in ``exokiratory.yaml``), the
result of one criterion, and the steps that feed each criterion."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field, ValidationError

from exokiratory.engine.step import PassParams

#: version of the thresholds' meaning; stored with every result and snapshot (bump when a
#: default or a definition changes)
PARAMS_VERSION = "stop-v1"

MET = "met"
NOT_MET = "not met"
INSUFFICIENT = "insufficient data"


class StopParams(PassParams):
    """``passes.stop`` in ``exokiratory.yaml``: the thresholds of the four criteria.

    Snapshot settings (the ``*_sample``, ``outlier_fraction``, ``pca_k``, ``bootstrap_*``,
    ``mknn_k``, ``vocab_min_df``, ``seed`` fields) change what a snapshot holds: snapshots taken
    with other settings are not compared with the current ones."""

    # 1. topology
    stable_ari: float = Field(
        0.9, ge=0, le=1, description="every clustering's ARI against the baseline snapshot"
    )
    bootstrap_stable: float = Field(
        0.75, ge=0, le=1, description="Hennig: mean bootstrap Jaccard of a valid cluster"
    )
    bootstrap_highly_stable: float = Field(
        0.85, ge=0, le=1, description="Hennig: highly stable cluster (shown, not required)"
    )
    bootstrap_sample: int = Field(1000, ge=20, le=100_000, description="images resampled")
    bootstrap_resamples: int = Field(20, ge=2, le=500, description="bootstrap resamples")
    bootstrap_max_k: int = Field(32, ge=2, le=1000, description="levels with more clusters skipped")
    bootstrap_niter: int = Field(10, ge=1, le=200, description="k-means iterations per resample")
    # 2. segments across spaces
    stable_ami_change: float = Field(
        0.02, ge=0, le=1, description="largest change of CLIP-vs-DINO motif AMI"
    )
    stable_mknn_change: float = Field(
        0.02, ge=0, le=1, description="largest change of the mutual k-NN alignment"
    )
    mknn_sample: int = Field(1000, ge=20, le=100_000, description="segments (fixed n)")
    mknn_k: int = Field(10, ge=1, le=100, description="neighbours of mutual k-NN")
    # 3. language
    pca_k: int = Field(5, ge=1, le=64, description="caption-embedding PCA components compared")
    max_angle_deg: float = Field(30.0, ge=0, le=90, description="largest principal angle, degrees")
    max_vocab_growth: float = Field(
        2.0, ge=0, description="new distinctive words per 100 new captions"
    )
    max_vendi_change: float = Field(
        0.05, ge=0, description="relative change of the captions' Vendi score"
    )
    vocab_min_df: int = Field(2, ge=1, description="a distinctive word is in >= this many captions")
    caption_sample: int = Field(20_000, ge=10, description="caption embeddings for PCA and Vendi")
    # 4. outliers
    outlier_fraction: float = Field(0.02, gt=0, le=0.5, description="top-q of each outlier score")
    stable_outlier_jaccard: float = Field(
        0.7, ge=0, le=1, description="each outlier set's Jaccard against the baseline"
    )
    seed: int = Field(0, description="seed of the bootstrap and the fixed samples")

    def snapshot_digest(self) -> str:
        """Digest of the settings that shape a snapshot (not the pure thresholds)."""
        keys = (
            "bootstrap_sample",
            "bootstrap_resamples",
            "bootstrap_max_k",
            "bootstrap_niter",
            "mknn_sample",
            "mknn_k",
            "pca_k",
            "vocab_min_df",
            "caption_sample",
            "outlier_fraction",
            "seed",
        )
        data = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(f"{PARAMS_VERSION}{data}".encode()).hexdigest()[:12]


def stop_params(config: Mapping[str, Any] | None) -> StopParams:
    """``passes.stop`` validated, with one clear error naming every bad key."""
    try:
        return StopParams.model_validate(dict(config or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"passes.stop.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from exc


@dataclass
class Criterion:
    """One criterion: its headline ``value`` against ``threshold`` (``rule`` says which way),
    a ``state``, the sub-measures (``values``), the ``evidence`` rows, and ``run``: the pass to
    run (insufficient data) or the pass whose last run moved it (not met)."""

    name: str
    title: str
    value: float | None
    threshold: float
    rule: str
    state: str
    why: str
    run: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return clean(asdict(self))


def clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities become None, floats rounded to 6 digits."""
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def first_pending(pending: Sequence[str], steps: Sequence[str]) -> str | None:
    """The first of ``pending`` (passes with units left, in run order) among ``steps``."""
    return next((p for p in pending if p in steps), None)


#: the steps whose outputs each criterion reads, upstream first
TOPOLOGY_STEPS = ("embed-clip", "embed-dino", "clusters-clip", "clusters-dino")
SEGMENT_STEPS = ("segment", "segment-embed-clip", "segment-embed-dino", "motifs")
LANGUAGE_STEPS = ("caption-select", "caption-factual", "caption-dense", "caption-embed")
OUTLIER_STEPS = ("sense", "flags", "clusters-clip", "clusters-dino", "motifs")
#: step-name prefix of PASS 8 (generative probing): read when present, never imported
GENPROBE_PREFIX = "genprobe"
#: the steps after which a snapshot is recorded (when they wrote rows or re-derived)
STRUCTURE_STEPS = frozenset(
    {
        "flags",
        "clusters-clip",
        "clusters-dino",
        "motifs",
        "caption-factual",
        "caption-dense",
        "caption-embed",
    }
)


def is_structural(step: str) -> bool:
    return step in STRUCTURE_STEPS or step.startswith(GENPROBE_PREFIX)
