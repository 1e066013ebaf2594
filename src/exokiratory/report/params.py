"""Parameters of a report build (validated up front; errors name the key)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ReportParams(BaseModel):
    """What a report shows and how much of it (sampling keeps the file small at any scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("report", description="file name: reports/<name>.html")
    map_sample: int = Field(2000, ge=10, le=50_000, description="points per embedding map")
    gallery_size: int = Field(16, ge=1, le=200, description="thumbnails per gallery")
    dup_groups: int = Field(8, ge=0, le=200, description="near-duplicate groups shown")
    per_stratum: int = Field(8, ge=1, le=100, description="random samples per stratum")
    exemplar_clusters: int = Field(12, ge=1, le=200, description="clusters per exemplar sheet")
    exemplars_per_cluster: int = Field(6, ge=1, le=50)
    histogram_bins: int = Field(40, ge=5, le=200)
    thumb_size: int = Field(96, ge=16, le=512, description="thumbnail longer side, pixels")
    seed: int = Field(0, description="seed of every random sample (same seed: same report)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v) or v.endswith(".html"):
            raise ValueError("use letters, digits, '_', '-', '.' (no '.html', no slashes)")
        return v


def make_params(**kwargs: object) -> ReportParams:
    """ReportParams from keyword arguments, with one clear error naming every bad key."""
    try:
        return ReportParams.model_validate({k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"report: {problems}") from exc
