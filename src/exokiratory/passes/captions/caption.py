"""The caption passes: one captioning model over the selected units (``caption_selection``).

Units: the selected units of the kinds in ``unit_kinds`` that have a readable file (and, for a
segment, its row in ``segments``), in ``priority`` order, minus those already captioned with
the same prompt id and version (:attr:`CaptionPass.done_view`). A batch's units are grouped by
image, each file read once (:mod:`exokiratory.passes.captions.inputs`); decode threads read,
decode, crop and run the processor up to two generation batches ahead, into the next planned
batch, while the model generates (the embedding passes' :class:`ReadAhead`).

Output (``captions/<kind>/<model>[-<params digest>]/``, per-pass view ``captions_<kind>``,
all passes together in view ``captions``): one row per unit and prompt version, see
:data:`CAPTION_FIELDS`. Greedy decoding, so a rerun gives the same text on the same hardware.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from exokiratory.core.prompts.registry import CaptionPrompt, PromptRegistryError
from exokiratory.engine.step import (
    MODEL_MODULES,
    BatchContext,
    Pass,
    PassParams,
    PassSetupError,
    Resource,
    missing_modules,
)
from exokiratory.models.registry import ModelSpec, model_slug, resolve
from exokiratory.passes.captions.inputs import CropSpec, by_image, encoded_group, fill_colour
from exokiratory.passes.embed.step import ReadAhead, cache_dir_for

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage
    from exokiratory.models.captioner import Captioner, Generated

log = logging.getLogger(__name__)

UnitKind = Literal["image", "segment"]

CAPTION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("unit_id", pa.string(), nullable=False),
    pa.field("unit_kind", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image_idx", pa.int64(), nullable=False),
    pa.field("segment_id", pa.string()),
    pa.field("mask_index", pa.int32()),
    pa.field("caption_id", pa.string(), nullable=False),
    pa.field("task", pa.string()),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model_id", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("generation_params", pa.string()),
    pa.field("is_random_weights", pa.bool_()),
    pa.field("text", pa.string()),
    pa.field("n_tokens", pa.int32()),
    pa.field("error", pa.string()),
)
"""Columns of a caption row. ``caption_id``: digest of unit, prompt id and version, model,
revision and generation parameters. ``generation_params``: JSON (``max_new_tokens``,
``do_sample`` false, ``num_beams`` 1, the ``prompt`` as the model saw it). ``is_random_weights``:
made by a tiny random-weight model (gibberish). ``n_tokens``: generated tokens that are not
special tokens."""

UNITS_SQL = """
SELECT c.unit_id, c.unit_kind, c.image_id, c.image_idx, c.segment_id, c.mask_index, c.priority,
       g.mask_height, g.mask_width, g.rle_counts, g.bbox, p.path, p.source
FROM caption_selection c
JOIN image_paths p USING (image_id)
LEFT JOIN {segments} g ON g.segment_id = c.segment_id
WHERE c.unit_kind IN ({kinds}) AND (c.unit_kind = 'image' OR g.segment_id IS NOT NULL)
ORDER BY c.priority
"""

NO_SEGMENTS = (
    "(SELECT NULL::VARCHAR AS segment_id, NULL::INTEGER AS mask_height, NULL::INTEGER AS "
    "mask_width, NULL::BLOB AS rle_counts, NULL::FLOAT[] AS bbox WHERE false)"
)


class CaptionParams(PassParams):
    """``passes.caption-factual`` / ``passes.caption-dense``."""

    model: str = Field("full", description="profile (full, lite, tiny...), hub id, or folder")
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantize: Literal["none", "8bit", "4bit"] = Field("none", description="bitsandbytes, CUDA")
    prompt: str = Field("caption_v1", description="caption prompt id for images")
    segment_prompt: str = Field("segment_v1", description="caption prompt id for segments")
    unit_kinds: tuple[UnitKind, ...] = Field(("image", "segment"), min_length=1)
    max_new_tokens: int = Field(40, ge=1, le=4096, description="per image caption")
    segment_max_new_tokens: int = Field(24, ge=1, le=4096, description="per segment caption")
    generate_batch_size: int = Field(8, ge=1, description="units per generate; halves on OOM")
    decode_threads: int = Field(4, ge=1, le=64)
    image_side: int = Field(1024, ge=64, description="decode size (longer side) of images")
    margin: float = Field(0.1, ge=0.0, le=2.0, description="segment crops: context around box")
    fill: Literal["model_mean", "black", "white", "grey"] = "model_mean"


class CaptionPass(Pass[CaptionParams]):
    """Base of the caption passes (``kind``: factual, dense; ``role``: its model role)."""

    kind: ClassVar[str]
    role: ClassVar[str]
    dataset = "captions"
    version = "v1"
    stage = 5
    resources = Resource.GPU
    reads = ("caption-select",)
    key = ("unit_id", "prompt_id", "prompt_version")
    unit_key = ("unit_id",)
    Params = CaptionParams
    units_sql = UNITS_SQL

    @property
    def spec(self) -> ModelSpec:
        spec = resolve(self.role, self.params.model)
        if self.params.revision is not None:
            spec = ModelSpec(spec.role, spec.model_id, self.params.revision, spec.space)
        return spec

    @property
    def view_name(self) -> str:
        return f"captions_{self.kind}"

    @property
    def done_view(self) -> str:
        """Rows of the prompt versions configured now (an edited prompt recaptions)."""
        return f"{self.view_name}_current"

    def in_all(self, configured: bool) -> bool:
        """A model pass: in ``run all`` once the config names it."""
        return configured

    def missing_requirement(self) -> str | None:
        missing = missing_modules(MODEL_MODULES, "ml")
        if missing is None and self.params.quantize != "none":
            absent = [m for m in ("bitsandbytes", "accelerate") if find_spec(m) is None]
            if absent:
                return f"needs {' and '.join(absent)} for quantize: pip install {' '.join(absent)}"
        return missing

    def generation_digest(self) -> str:
        """'' for the default parameters that change rows, else ``-<digest>``."""
        p = self.params
        keys = ("max_new_tokens", "segment_max_new_tokens", "image_side", "margin", "fill")
        changed = {
            k: getattr(p, k) for k in keys if getattr(p, k) != type(p).model_fields[k].default
        }
        if not changed:
            return ""
        text = json.dumps(changed, sort_keys=True)
        return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def output_rel(self) -> str:
        return (
            f"{self.dataset}/{self.kind}/{model_slug(self.spec.model_id)}{self.generation_digest()}"
        )

    @property
    def full_version(self) -> str:
        spec = self.spec
        return f"{self.version}:{spec.model_id}@{spec.revision or 'main'}{self.generation_digest()}"

    def output_schema(self) -> pa.Schema:
        return pa.schema(list(CAPTION_FIELDS))

    # -- prompts -----------------------------------------------------------------------------
    def prompts(self, storage: Storage) -> dict[str, CaptionPrompt]:
        """The caption prompt of each unit kind, checked against the version record."""
        from exokiratory.core.prompts.versions import caption_prompt

        p = self.params
        return {
            "image": caption_prompt(storage, p.prompt),
            "segment": caption_prompt(storage, p.segment_prompt),
        }

    def define_views(self, catalog: Catalog) -> None:
        super().define_views(catalog)
        try:
            prompts = self.prompts(catalog.storage)
            cond = " OR ".join(
                f"(unit_kind = '{k}' AND prompt_id = '{pr.id}' AND prompt_version = '{pr.version}')"
                for k, pr in prompts.items()
            )
        except PromptRegistryError:  # the run says why; views stay usable
            cond = "false"
        catalog.define_view(self.done_view, f'SELECT * FROM "{self.view_name}" WHERE {cond}')

    def views(self) -> list[str]:
        return [self.view_name, self.done_view]

    def units(self, catalog: Catalog) -> pa.Table:
        self.prompts(catalog.storage)  # an edited prompt stops here, before any work
        if "caption_selection" not in catalog.views:
            raise RuntimeError(f"{self.name} needs the selection: run `exokiratory run caption`")
        kinds = ", ".join(f"'{k}'" for k in self.params.unit_kinds)
        segments = "segments" if "segments" in catalog.views else NO_SEGMENTS
        return catalog.query(self.units_sql.format(kinds=kinds, segments=segments))

    # -- batches -----------------------------------------------------------------------------
    def load(self, workspace_url: str) -> Captioner:
        """The captioner (cached per process); one that cannot load stops the pass with one
        line saying why."""
        from exokiratory.models.captioner import load_captioner

        p = self.params
        spec = self.spec
        try:
            captioner = load_captioner(spec, cache_dir_for(workspace_url), p.device, p.quantize)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise PassSetupError(
                f"cannot load captioner {spec.model_id!r}: {type(exc).__name__}: {reason} "
                f"(offline? point passes.{self.name}.model at a local folder, or use 'tiny' "
                "for plumbing)"
            ) from exc
        captioner.batch_size = p.generate_batch_size  # halves on CUDA OOM
        return captioner

    def _batch_prompts(self, ctx: BatchContext) -> dict[str, CaptionPrompt]:
        from exokiratory.core.prompts.versions import record_caption_prompt
        from exokiratory.core.storage import Storage

        storage = Storage(ctx.workspace_url, ctx.storage_options)
        try:
            prompts = self.prompts(storage)
            for pr in prompts.values():
                record_caption_prompt(storage, pr)
        except PromptRegistryError as exc:
            raise PassSetupError(str(exc)) from exc
        return prompts

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        p = self.params
        captioner = self.load(ctx.workspace_url)
        prompts = self._batch_prompts(ctx)
        texts = {k: captioner.prompt_text(pr.text, pr.task) for k, pr in prompts.items()}
        tokens = {"image": p.max_new_tokens, "segment": p.segment_max_new_tokens}
        spec = CropSpec(
            p.image_side, p.margin, fill_colour(p.fill, captioner.image_mean), ctx.max_image_pixels
        )
        rows = units.to_pylist()
        results: dict[int, Generated | str] = {}
        pending: dict[str, list[tuple[int, Any]]] = {"image": [], "segment": []}

        def flush(kind: str) -> None:
            batch = pending[kind]
            if batch:
                made = captioner.generate([enc for _, enc in batch], tokens[kind])
                results.update(zip((i for i, _ in batch), made, strict=True))
                batch.clear()

        def encode(group: dict[str, Any]) -> list[tuple[int, Any]]:
            return encoded_group(group, ctx, spec, captioner.encode, texts)

        if self._readahead is None:
            self._readahead = ReadAhead(p.decode_threads)
        upcoming = by_image(self._next_units) if self._next_units else None
        ahead = 2 * p.generate_batch_size  # images (each with one or more units) in advance
        for group in self._readahead.ordered(encode, by_image(rows), ahead, upcoming):
            for i, enc in group:
                if isinstance(enc, str):
                    results[i] = enc
                    continue
                kind = rows[i]["unit_kind"]
                pending[kind].append((i, enc))
                if len(pending[kind]) >= p.generate_batch_size:
                    flush(kind)
        flush("image")
        flush("segment")
        if not upcoming:
            self.release()
        return self._table(rows, results, prompts, texts, tokens, captioner)

    #: decode threads, kept across the batches of one run in this process
    _readahead: ReadAhead | None = None
    _next_units: list[dict[str, Any]] | None = None

    def lookahead(self, units: pa.Table | None) -> None:
        self._next_units = units.to_pylist() if units is not None else None

    def release(self) -> None:
        if self._readahead is not None:
            self._readahead.close()
            self._readahead = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # threads stay in the process that made them
        state.pop("_readahead", None)
        state.pop("_next_units", None)
        return state

    def _table(
        self,
        rows: list[dict[str, Any]],
        results: dict[int, Generated | str],
        prompts: dict[str, CaptionPrompt],
        texts: dict[str, str],
        tokens: dict[str, int],
        captioner: Captioner,
    ) -> pa.Table:
        out = []
        for i, row in enumerate(rows):
            kind = row["unit_kind"]
            pr = prompts[kind]
            gen = json.dumps(
                {
                    "max_new_tokens": tokens[kind],
                    "do_sample": False,
                    "num_beams": 1,
                    "prompt": texts[kind],
                },
                sort_keys=True,
            )
            res = results[i]
            ident = [row["unit_id"], pr.id, pr.version, self.spec.model_id, captioner.revision, gen]
            out.append(
                {
                    **{k: row[k] for k in ("unit_id", "unit_kind", "image_id", "image_idx")},
                    "segment_id": row["segment_id"],
                    "mask_index": row["mask_index"],
                    "caption_id": hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32],
                    "task": pr.task,
                    "prompt_id": pr.id,
                    "prompt_version": pr.version,
                    "model_id": self.spec.model_id,
                    "model_revision": captioner.revision,
                    "generation_params": gen,
                    "is_random_weights": self.spec.is_tiny,
                    "text": None if isinstance(res, str) else res.text,
                    "n_tokens": None if isinstance(res, str) else res.n_tokens,
                    "error": res if isinstance(res, str) else None,
                }
            )
        return pa.Table.from_pylist(out, schema=self.output_schema())
