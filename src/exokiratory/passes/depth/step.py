"""``depth`` (PASS 6): relative depth of the routed photographs -> semantics/depth/<model>/<version>/.

Routing (:mod:`exokiratory.engine.routing`): by default ``passes.depth.route`` =
:data:`DEFAULT_ROUTE`, the images worth GPU time that the flags class as photographs.
Each image is decoded once (longer side at most ``decode_side`` = 1280 px; larger images are
downscaled first), turned into the model's input (Depth Anything's processor rule: aspect kept,
one side 518 px, multiples of 14: :mod:`exokiratory.models.depth`) and predicted; inputs of
equal shape share a forward (``forward_batch_size``, halved on CUDA out-of-memory errors).

Columns (definitions in :mod:`exokiratory.passes.depth.stats`): ``depth_p05`` .. ``depth_p95``,
``near_fraction``, ``far_fraction``, ``depth_entropy_score``, ``planarity_score``,
``depth_layering_score``, ``disparity_min``, ``disparity_max``; ``depth_map`` (float16, row-major,
0 = near .. 1 = far, longer side ``map_side`` = 64 px) with ``depth_map_height`` /
``depth_map_width``; ``input_height`` / ``input_width`` (the model input); ``model_id``
(``tiny:depth`` = random weights: plumbing, never meaning), ``revision``, ``error``.

``depth-segments`` (a derivation, view ``depth_segments``): per SAM segment, the mean and median
of the image's depth map under the segment's mask (:mod:`exokiratory.passes.depth.segments`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from exokiratory.engine.registry import register
from exokiratory.engine.routing import (
    UNIT_ONLY_PARAMS,
    check_route,
    decoded_inputs,
    routed_units,
)
from exokiratory.engine.step import (
    MODEL_MODULES,
    BatchContext,
    Derivation,
    Pass,
    PassParams,
    PassSetupError,
    Resource,
    RoutedParams,
    missing_modules,
)
from exokiratory.models.registry import ModelSpec, model_slug, resolve

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.models.depth import DepthEstimator

DEFAULT_ROUTE = "f.is_worth_gpu AND f.is_photo"

DEPTH_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        *(
            pa.field(c, pa.float32())
            for c in (
                "depth_p05",
                "depth_p25",
                "depth_p50",
                "depth_p75",
                "depth_p95",
                "near_fraction",
                "far_fraction",
                "depth_entropy_score",
                "planarity_score",
                "depth_layering_score",
                "disparity_min",
                "disparity_max",
            )
        ),
        pa.field("depth_map", pa.list_(pa.float16())),
        pa.field("depth_map_height", pa.int32()),
        pa.field("depth_map_width", pa.int32()),
        pa.field("input_height", pa.int32()),
        pa.field("input_width", pa.int32()),
        pa.field("model_id", pa.string()),
        pa.field("revision", pa.string()),
        pa.field("error", pa.string()),
    ]
)

#: parameters that change how the pass runs, not what it writes (kept out of the version)
RUN_ONLY = frozenset(
    {"model", "revision", "device", "forward_batch_size", "decode_threads", *UNIT_ONLY_PARAMS}
)


class SelectiveModelParams(RoutedParams):
    """What the PASS 6 model passes (depth, detection) share."""

    model: str = Field("lite", description="profile, hub id, or local folder ('tiny': random)")
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_batch_size: int = Field(8, ge=1, description="images per forward; halves on OOM")
    decode_threads: int = Field(2, ge=1, le=64, description="images decoded ahead by threads")
    decode_side: int = Field(1280, ge=64, le=8192, description="longer side of the decode, px")
    route: str = Field(..., description="SQL condition over the flags view (alias f)")

    @field_validator("route")
    @classmethod
    def _route(cls, v: str) -> str:
        return check_route(v)


class DepthParams(SelectiveModelParams):
    model: str = Field(
        "lite",
        description="profile (lite = full = small: Depth Anything V2 Small, Apache-2.0; base, "
        "large: CC-BY-NC-4.0, non-commercial; tiny: random weights), hub id, or local folder",
    )
    route: str = Field(DEFAULT_ROUTE, description="SQL condition over the flags view (alias f)")
    map_side: int = Field(64, ge=8, le=512, description="longer side of the stored depth map")


def model_version(version: str, spec: ModelSpec, params: PassParams) -> str:
    """``<version>-<model slug>[@revision]``, plus a digest of the row-changing parameters
    that differ from the defaults."""
    base = f"{version}-{model_slug(spec.model_id)}"
    if spec.revision:
        base += f"@{model_slug(spec.revision)}"
    changed = {
        k: v for k, v in params.model_dump(exclude_defaults=True).items() if k not in RUN_ONLY
    }
    if not changed:
        return base
    text = json.dumps(changed, sort_keys=True, default=str)
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def model_spec(role: str, params: SelectiveModelParams) -> ModelSpec:
    spec = resolve(role, params.model)
    if params.revision is not None:
        spec = ModelSpec(spec.role, spec.model_id, params.revision, spec.space)
    return spec


SP = TypeVar("SP", bound=SelectiveModelParams)


class _Batched(Protocol):
    batch_size: int


M = TypeVar("M", bound=_Batched)


class SelectiveModelPass(Pass[SP]):
    """A PASS 6 model pass (depth, detection): routed by the flags, in ``run all`` once the
    config names it, its model loaded through ``load`` with one line saying why it failed."""

    resources = Resource.GPU
    reads = ("flags",)
    units_sql = ""  # units(): routed
    #: the model registry role of the pass's model
    role: ClassVar[str]

    @property
    def spec(self) -> ModelSpec:
        return model_spec(self.role, self.params)

    def in_all(self, configured: bool) -> bool:
        """A model pass: ``run all`` includes it once the config names it."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(MODEL_MODULES, "ml")

    def units(self, catalog: Catalog) -> pa.Table:
        p = self.params
        return routed_units(catalog, self.name, p.route, p.routed_only)

    def load_model(self, ctx: BatchContext, load: Callable[[ModelSpec, str, str], M]) -> M:
        """``load(spec, cache_dir, device)``, its ``batch_size`` set to the configured one;
        a failure stops the pass (``PassSetupError``) with one line naming the model."""
        from exokiratory.passes.embed.step import cache_dir_for

        try:
            model = load(self.spec, cache_dir_for(ctx.workspace_url), self.params.device)
        except Exception as exc:
            raise PassSetupError(
                f"cannot load {self.name} model {self.spec.model_id!r}: {type(exc).__name__}: "
                f"{exc}. Offline? Point passes.{self.name}.model at a local folder, or use "
                "'tiny' for plumbing."
            ) from exc
        model.batch_size = self.params.forward_batch_size
        return model


@register
class DepthPass(SelectiveModelPass[DepthParams]):
    name = "depth"
    dataset = "semantics/depth"
    version = "v1"
    stage = 6
    role = "depth"
    Params = DepthParams
    description = "relative depth (Depth Anything V2) of the routed photographs"

    @property
    def full_version(self) -> str:
        return model_version(self.version, self.spec, self.params)

    def output_schema(self) -> pa.Schema:
        return DEPTH_SCHEMA

    def _estimator(self, ctx: BatchContext) -> DepthEstimator:
        from exokiratory.models.depth import load_depth_estimator

        return self.load_model(ctx, load_depth_estimator)

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        from exokiratory.passes.depth.stats import depth_summary

        p = self.params
        est = self._estimator(ctx)
        rows = units.to_pylist()
        out: list[dict[str, Any]] = [{} for _ in rows]
        pending: list[tuple[int, np.ndarray]] = []

        def forward() -> None:
            maps = est.predict([x for _, x in pending])
            for (i, x), m in zip(pending, maps, strict=True):
                out[i] = depth_summary(m, p.map_side) | {
                    "input_height": int(x.shape[1]),
                    "input_width": int(x.shape[2]),
                }
            pending.clear()

        items = decoded_inputs(rows, ctx, est.pixels, p.decode_side, p.decode_threads)
        for i, item in enumerate(items):
            if isinstance(item, str):
                out[i] = {"error": item}
                continue
            pending.append((i, item[1]))
            if len(pending) >= p.forward_batch_size:
                forward()
        forward()
        return self._table(rows, out)

    def _table(self, rows: list[dict[str, Any]], out: list[dict[str, Any]]) -> pa.Table:
        spec = self.spec
        for r, o in zip(rows, out, strict=True):
            o["image_id"], o["image_idx"] = r["image_id"], r["image_idx"]
            ok = "error" not in o
            o["model_id"] = spec.model_id if ok else None
            o["revision"] = spec.revision if ok else None
            o.setdefault("error", None)
        return pa.Table.from_pylist(out, schema=DEPTH_SCHEMA)


@register
class DepthSegmentsDerivation(Derivation[PassParams]):
    """Per-segment depth from the stored depth maps and SAM masks (no image is decoded)."""

    name = "depth-segments"
    dataset = "semantics/depth_segments"
    version = "v1"
    stage = 6
    reads = ("depth",)
    #: re-derived after the segment pass writes rows (it runs before depth in ``run all``)
    optional_reads = ("segment",)
    description = "mean / median relative depth of every SAM segment (depth map x mask)"

    def output_schema(self) -> pa.Schema:
        from exokiratory.passes.depth.segments import DEPTH_SEGMENTS_SCHEMA

        return DEPTH_SEGMENTS_SCHEMA

    def in_all(self, configured: bool) -> bool:
        """When the depth pass is configured (without segments it derives an empty table)."""
        return configured

    def derive(self, catalog: Catalog) -> pa.Table:
        from exokiratory.passes.depth.segments import segment_depths

        return segment_depths(catalog)
