"""``genprobe`` (PASS 8): img2img and ControlNet generations from cluster exemplars, re-embedded.

Units (:mod:`exokiratory.passes.genprobe.inputs`): cluster exemplars x ``conditionings``
(``none`` = plain img2img, ``depth`` = ControlNet on the PASS 6 depth map, ``canny`` = ControlNet
on OpenCV Canny edges) x ``strengths`` x ``seeds``, keyed ``gen_id``. One part per batch. Each
generation (:mod:`exokiratory.models.diffusion`; SD 1.5 by default, fp16 and model CPU offload
on CUDA) is stored as encoded bytes (``image``: WebP by default, or PNG) inside the Parquet row,
never as a file, with its seed, strength, conditioning, prompt (source, id, version, text),
steps, guidance, model ids and ``error``.

**Re-embedding in the same pass.** Every generation is embedded, from its stored bytes, with the
same CLIP and DINOv2 models as PASS 1 (those configured for ``embed-clip`` / ``embed-dino``:
:class:`exokiratory.passes.embed.step.EmbeddingModel`, the same loading, preprocessing and
storage dtype): columns ``clip_embedding`` / ``dino_embedding`` with ``clip_model_id`` /
``dino_model_id``. Columns of the same row rather than a second pass because a generation and its
vectors then commit in one atomic part (no state where a generation exists without its vectors),
one config entry runs the whole probe, and the vectors are the measures' only input; the price,
a new PASS 1 model regenerating instead of only re-embedding, is small next to keeping the two
consistent (the version names both embedding models).

Bad input is a row: an exemplar that cannot be read or decoded, or has no depth map (for
``depth``), gets an ``error`` naming why. No clusters: "run clusters-<space> first".

``genprobe-measures`` (a derivation, :mod:`exokiratory.passes.genprobe.measures`) writes the
views ``genprobe_stability``, ``genprobe_stability_clusters``, ``genprobe_exemplars``,
``genprobe_holes`` and ``genprobe_fragile``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from exokiratory.engine.registry import register
from exokiratory.engine.step import (
    MODEL_MODULES,
    BatchContext,
    Derivation,
    Pass,
    PassParams,
    PassSetupError,
    Resource,
    Step,
    missing_modules,
)
from exokiratory.models.registry import TINY_PREFIX, ModelSpec, model_slug, resolve
from exokiratory.passes.embed.step import EmbeddingModel, ModelParams
from exokiratory.passes.genprobe import inputs
from exokiratory.passes.genprobe.measures import (
    CLUSTERS_SCHEMA,
    EXEMPLARS_SCHEMA,
    FRAGILE_SCHEMA,
    HOLES_SCHEMA,
    STABILITY_SCHEMA,
    MeasuresParams,
)

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.models.diffusion import DiffusionProbe, GenerationRequest

log = logging.getLogger(__name__)

Conditioning = Literal["none", "depth", "canny"]
Space = Literal["clip", "dino"]

SPACES: tuple[str, ...] = ("clip", "dino")

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("gen_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("cluster_id", pa.int32()),
        pa.field("cluster_level", pa.int8()),
        pa.field("conditioning", pa.string()),
        pa.field("strength", pa.float32()),
        pa.field("seed", pa.int64()),
        pa.field("prompt_source", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("prompt_text", pa.string()),
        pa.field("steps", pa.int32()),
        pa.field("guidance_scale", pa.float32()),
        pa.field("image", pa.binary()),
        pa.field("image_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model_id", pa.string()),
        pa.field("revision", pa.string()),
        pa.field("controlnet_id", pa.string()),
        pa.field("conditioning_model_id", pa.string()),
        pa.field("is_random_weights", pa.bool_()),
        pa.field("clip_embedding", pa.list_(pa.float16())),
        pa.field("clip_model_id", pa.string()),
        pa.field("dino_embedding", pa.list_(pa.float16())),
        pa.field("dino_model_id", pa.string()),
        pa.field("error", pa.string()),
    ]
)

#: parameters that change which units exist or how the pass runs, never a row (kept out of
#: the version)
UNIT_ONLY = frozenset(
    {
        "revision",
        "device",
        "offload",
        "forward_batch_size",
        "max_exemplars",
        "exemplars_per_cluster",
        "strengths",
        "seeds",
        "conditionings",
        "model",
        "controlnet_depth",
        "controlnet_canny",
    }
)


class GenProbeParams(PassParams):
    """``passes.genprobe``: models, which exemplars, the ladder, the generation settings."""

    model: str = Field(
        "lite",
        description="Stable Diffusion 1.x pipeline: profile (lite = full = SD 1.5; tiny: random "
        "weights), hub id, or local folder",
    )
    revision: str | None = None
    controlnet_depth: str = Field("lite", description="depth ControlNet (profile, id, folder)")
    controlnet_canny: str = Field("lite", description="canny ControlNet (profile, id, folder)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    offload: bool = Field(True, description="model CPU offload on CUDA (needs accelerate)")
    forward_batch_size: int = Field(4, ge=1, description="generations per call on a GPU")
    space: Space = Field("clip", description="the clusters whose exemplars are probed")
    level: int = Field(-1, ge=-8, le=7, description="cluster level (0 finest, -1 coarsest)")
    exemplars_per_cluster: int = Field(1, ge=1, le=100)
    max_exemplars: int = Field(64, ge=1, description="exemplars probed, largest clusters first")
    strengths: tuple[float, ...] = Field(
        (0.25, 0.5, 0.75, 0.9), min_length=1, description="img2img strengths (the ladder)"
    )
    conditionings: tuple[Conditioning, ...] = Field(("none", "depth", "canny"), min_length=1)
    seeds: tuple[int, ...] = Field((0, 1), min_length=1, description="one generation per seed")
    steps: int = Field(30, ge=1, le=1000, description="inference steps (x strength are run)")
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    controlnet_scale: float = Field(1.0, ge=0.0, le=5.0)
    size: int = Field(512, ge=16, le=2048, description="side of the square generations, px")
    prompt: str = Field("genprobe_v1", description="registry prompt when there is no caption")
    use_captions: bool = Field(True, description="prompt with the exemplar's caption if any")
    canny_low: int = Field(100, ge=0, le=1000)
    canny_high: int = Field(200, ge=0, le=1000)
    image_format: Literal["webp", "png"] = "webp"
    quality: int = Field(90, ge=1, le=100, description="WebP quality")

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < s <= 1.0 for s in v):
            raise ValueError("strengths must be in (0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("strengths must be distinct")
        return tuple(sorted(v))

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 8:
            raise ValueError("size must be a multiple of 8 (the VAE and UNet downsampling)")
        return v


def _spec(role: str, name: str, revision: str | None = None) -> ModelSpec:
    spec = resolve(role, name)
    return ModelSpec(spec.role, spec.model_id, revision, spec.space) if revision else spec


@register
class GenProbePass(Pass[GenProbeParams]):
    """Generations from cluster exemplars, re-embedded (see the module docstring)."""

    name = "genprobe"
    dataset = "genprobe/outputs"
    version = "v1"
    stage = 8
    resources = Resource.GPU
    key = ("gen_id",)
    reads = ("clusters-clip", "clusters-dino", "caption-factual", "caption-dense", "depth")
    Params = GenProbeParams
    description = "PASS 8: img2img / ControlNet generations of cluster exemplars, re-embedded"
    units_sql = ""  # units(): exemplars x ladder

    def __init__(self, params: dict[str, Any] | None = None):
        super().__init__(params)
        #: the PASS 1 models (after :meth:`bind`: those of embed-clip / embed-dino)
        self.embed_models: dict[str, ModelParams] = {s: ModelParams(model="lite") for s in SPACES}

    def bind(self, steps: Sequence[Step[Any]]) -> None:
        """Re-embed with the configured ``embed-clip`` / ``embed-dino`` models (the workspace
        calls this, as it does a derivation's ``bind``)."""
        for s in steps:
            space = s.name.removeprefix("embed-")
            if space in SPACES and s.name == f"embed-{space}" and isinstance(s.params, ModelParams):
                self.embed_models[space] = s.params

    @property
    def view_name(self) -> str:
        return "genprobe_outputs"

    @property
    def spec(self) -> ModelSpec:
        return _spec("diffusion", self.params.model, self.params.revision)

    def control_spec(self, kind: str) -> ModelSpec:
        name = self.params.controlnet_depth if kind == "depth" else self.params.controlnet_canny
        return _spec(f"controlnet-{kind}", name)

    def embedding_model(self, space: str) -> EmbeddingModel:
        params = self.embed_models[space].model_copy(update={"device": self.params.device})
        return EmbeddingModel(space, params, self.name)

    @property
    def full_version(self) -> str:
        """``<version>-<diffusion slug>-<digest>``: the digest covers the row-changing
        parameters, the ControlNets and the two embedding models."""
        p = self.params
        changed = {k: v for k, v in p.model_dump().items() if k not in UNIT_ONLY}
        changed["controlnets"] = [self.control_spec(k).model_id for k in ("depth", "canny")]
        changed["embed"] = [
            f"{self.embedding_model(s).spec.model_id}@{self.embedding_model(s).spec.revision}"
            for s in SPACES
        ]
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode())
        rev = f"@{model_slug(self.spec.revision)}" if self.spec.revision else ""
        return f"{self.version}-{model_slug(self.spec.model_id)}{rev}-{digest.hexdigest()[:8]}"

    def output_schema(self) -> pa.Schema:
        return OUTPUT_SCHEMA

    def in_all(self, configured: bool) -> bool:
        """Optional and late: ``run all`` includes it only once the config names it."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules((*MODEL_MODULES, "diffusers"), "ml")

    # -- units -------------------------------------------------------------------------------
    def units(self, catalog: Catalog) -> pa.Table:
        p = self.params
        prompt = inputs.registry_prompt(catalog.storage, p.prompt)
        exemplars = inputs.exemplar_rows(
            catalog, p.space, p.level, p.exemplars_per_cluster, p.max_exemplars
        )
        return inputs.unit_table(
            exemplars, p.conditionings, p.strengths, p.seeds, prompt, p.use_captions
        )

    def error_rows(self, units: pa.Table, message: str) -> pa.Table:
        table = super().error_rows(units, message)
        return table.set_column(
            table.schema.get_field_index("image_id"),
            OUTPUT_SCHEMA.field("image_id"),
            units.column("exemplar_id"),
        )

    # -- batches -----------------------------------------------------------------------------
    def _probe(self, ctx: BatchContext, kinds: set[str]) -> DiffusionProbe:
        from exokiratory.models.diffusion import load_controlnet, load_diffusion
        from exokiratory.passes.embed.step import cache_dir_for

        p = self.params
        cache = cache_dir_for(ctx.workspace_url)
        spec = self.spec
        try:
            probe = load_diffusion(spec, cache, p.device, offload=p.offload)
            for kind in sorted(kinds - {"none"}):
                cspec = self.control_spec(kind)
                spec = cspec
                probe.add_controlnet(kind, load_controlnet(cspec, cache, p.device))
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise PassSetupError(
                f"cannot load {spec.role} model {spec.model_id!r}: {type(exc).__name__}: "
                f"{reason} (offline? point passes.genprobe.model / controlnet_* at a local "
                "folder, or use 'tiny' for plumbing)"
            ) from exc
        probe.batch_size = p.forward_batch_size
        return probe

    def _record_prompt(self, ctx: BatchContext, units: list[dict[str, Any]]) -> None:
        from exokiratory.core.prompts.registry import PromptRegistryError
        from exokiratory.core.prompts.versions import record_caption_prompt
        from exokiratory.core.storage import Storage

        if not any(u["prompt_source"] == "registry" for u in units):
            return
        storage = Storage(ctx.workspace_url, ctx.storage_options)
        try:
            record_caption_prompt(storage, inputs.registry_prompt(storage, self.params.prompt))
        except PromptRegistryError as exc:
            raise PassSetupError(str(exc)) from exc

    def _requests(
        self, units: list[dict[str, Any]], ctx: BatchContext
    ) -> list[GenerationRequest | str]:
        """Each unit's generation request, or the error text (one decode per exemplar)."""
        from PIL import Image

        from exokiratory.models.diffusion import GenerationRequest

        p = self.params
        decoded: dict[str, Image.Image | str] = {}
        out: list[GenerationRequest | str] = []
        for u in units:
            ex = u["exemplar_id"]
            if ex not in decoded:
                decoded[ex] = _decode(u, ctx, p.size)
            init = decoded[ex]
            if isinstance(init, str):
                out.append(init)
                continue
            try:
                control = None
                if u["conditioning"] == "depth":
                    control = inputs.depth_control(u, p.size)
                elif u["conditioning"] == "canny":
                    control = inputs.canny_control(init, p.canny_low, p.canny_high)
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
                continue
            out.append(
                GenerationRequest(
                    init,
                    u["prompt_text"],
                    float(u["strength"]),
                    int(u["seed"]),
                    u["conditioning"],
                    control,
                )
            )
        return out

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        from exokiratory.models.diffusion import GenerationRequest, GenerationSettings

        p = self.params
        rows = units.to_pylist()
        self._record_prompt(ctx, rows)
        reqs = self._requests(rows, ctx)
        good = [i for i, r in enumerate(reqs) if isinstance(r, GenerationRequest)]
        images: dict[int, bytes] = {}
        if good:
            probe = self._probe(ctx, {rows[i]["conditioning"] for i in good})
            settings = GenerationSettings(p.steps, p.guidance_scale, p.controlnet_scale)
            batch = [r for r in reqs if isinstance(r, GenerationRequest)]
            for i, rgb in zip(good, probe.generate(batch, settings), strict=True):
                images[i] = inputs.encode(rgb, p.image_format, p.quality)
        vectors = {s: self._embed(s, images, ctx) for s in SPACES}
        return self._table(rows, reqs, images, vectors)

    def _embed(
        self, space: str, images: dict[int, bytes], ctx: BatchContext
    ) -> dict[int, np.ndarray]:
        """The PASS 1 embedding of each generated image, from its stored bytes."""
        from exokiratory.passes.embed.step import InputSpec, model_input

        if not images:
            return {}
        embedder = self.embedding_model(space).load(ctx.workspace_url)
        spec = InputSpec(embedder.preprocessing, embedder.image_size, ctx.max_image_pixels)
        order = sorted(images)
        pixels = np.stack([model_input(images[i], spec) for i in order])
        return dict(zip(order, embedder.embed_pixels(pixels), strict=True))

    def _table(
        self,
        rows: list[dict[str, Any]],
        reqs: list[Any],
        images: dict[int, bytes],
        vectors: dict[str, dict[int, np.ndarray]],
    ) -> pa.Table:
        p = self.params
        spec = self.spec
        emb = {s: self.embedding_model(s) for s in SPACES}
        out = []
        for i, u in enumerate(rows):
            ok = i in images
            kind = u["conditioning"]
            cond_model = {"depth": u["depth_model_id"], "canny": inputs.CANNY_MODEL}.get(kind)
            cspec = self.control_spec(kind) if kind != "none" else None
            ids = [spec.model_id, *([cspec.model_id] if cspec else []), cond_model or ""]
            out.append(
                {
                    "gen_id": u["gen_id"],
                    "image_id": u["exemplar_id"],
                    "image_idx": u["image_idx"],
                    "cluster_id": u["cluster_id"],
                    "cluster_level": u["cluster_level"],
                    "conditioning": kind,
                    "strength": u["strength"],
                    "seed": u["seed"],
                    "prompt_source": u["prompt_source"],
                    "prompt_id": u["prompt_id"],
                    "prompt_version": u["prompt_version"],
                    "prompt_text": u["prompt_text"],
                    "steps": p.steps,
                    "guidance_scale": p.guidance_scale,
                    "image": images.get(i),
                    "image_format": p.image_format if ok else None,
                    "width": p.size if ok else None,
                    "height": p.size if ok else None,
                    "model_id": spec.model_id,
                    "revision": spec.revision,
                    "controlnet_id": cspec.model_id if cspec else None,
                    "conditioning_model_id": cond_model,
                    "is_random_weights": any(m.startswith(TINY_PREFIX) for m in ids),
                    "error": None if ok else str(reqs[i]),
                    **{f"{s}_embedding": _half(vectors[s].get(i)) for s in SPACES},
                    **{f"{s}_model_id": emb[s].spec.model_id if ok else None for s in SPACES},
                }
            )
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def _half(v: np.ndarray | None) -> list[float] | None:
    """A stored vector: float16 values (PASS 1's default storage dtype)."""
    return None if v is None else np.asarray(v, np.float16).tolist()


def _decode(unit: dict[str, Any], ctx: BatchContext, size: int) -> Any:
    """The exemplar's init image, or the error text (a bad exemplar is rows with errors)."""
    if not unit.get("path"):
        return "no readable path for this exemplar (missing since the scan?)"
    try:
        return inputs.init_image(
            ctx.read_bytes(unit["path"], unit.get("source")), size, ctx.max_image_pixels
        )
    except Exception as exc:
        return f"cannot decode the exemplar: {type(exc).__name__}: {exc}"


@register
class GenProbeMeasures(Derivation[MeasuresParams]):
    """Style stability, holes, fragile motifs and reconstruction outlier scores (see
    :mod:`exokiratory.passes.genprobe.measures`)."""

    name = "genprobe-measures"
    dataset = "genprobe/measures"
    version = "v1"
    stage = 8
    reads = ("genprobe",)
    optional_reads = (
        "embed-clip",
        "embed-dino",
        "clusters-clip",
        "clusters-dino",
        "flags",
        "motifs",
    )
    Params = MeasuresParams
    description = "PASS 8 measures: style stability, holes in the manifold, fragile motifs"

    #: extra table -> its view (the family's ``genprobe_*`` names)
    EXTRA_VIEWS = {
        "clusters": "genprobe_stability_clusters",
        "exemplars": "genprobe_exemplars",
        "holes": "genprobe_holes",
        "fragile": "genprobe_fragile",
    }

    @property
    def view_name(self) -> str:
        return "genprobe_stability"

    def bind(self, steps: Sequence[Step[Any]]) -> None:
        """As every derivation, after binding the genprobe pass among ``steps`` to its embedding
        models (its output folder, part of this input fingerprint, depends on them)."""
        for s in steps:
            if isinstance(s, GenProbePass):
                s.bind(steps)
        super().bind(steps)

    def in_all(self, configured: bool) -> bool:
        """Once genprobe is configured."""
        return configured

    def output_schema(self) -> pa.Schema:
        return STABILITY_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {
            "clusters": CLUSTERS_SCHEMA,
            "exemplars": EXEMPLARS_SCHEMA,
            "holes": HOLES_SCHEMA,
            "fragile": FRAGILE_SCHEMA,
        }

    def views(self) -> list[str]:
        return [self.view_name, *self.EXTRA_VIEWS.values()]

    def define_views(self, catalog: Catalog) -> None:
        from exokiratory.core.dataset import current_folder

        folder = current_folder(catalog.storage, self.dataset) or f"{self.dataset}/.none"
        catalog.define_table_view(self.view_name, folder, self.output_schema())
        for name, schema in self.extra_schemas().items():
            catalog.define_table_view(self.EXTRA_VIEWS[name], f"{folder}/{name}", schema)

    def derive(self, catalog: Catalog) -> pa.Table:
        return self.derive_outputs(catalog)[""]

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        from exokiratory.passes.genprobe.measures import all_measures

        return all_measures(catalog, self.params)


def random_weight_note(rows: int) -> str:
    """What the report and the demo say about random-weight generations."""
    return (
        f"{rows:,} generations by RANDOM-WEIGHT 'tiny' pipelines: noise, not images; the "
        "stability, holes and fragile motifs computed from them are plumbing, never meaning"
    )
