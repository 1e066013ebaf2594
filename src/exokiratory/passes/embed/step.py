"""``embed-clip`` / ``embed-dino``: global image embeddings (the semantic and structural backbone).

One row per image in ``embeddings/<space>/<model>/``: ``image_id``, ``image_idx``, the
L2-normalised ``embedding`` (float16 by default), ``model_id``, ``revision`` and ``error``.
By default only the images that routing says are worth GPU time (``images_routed``; all readable
images when no flags exist yet); ``passes.embed-clip.routed_only: false`` embeds every readable
image. The model is loaded once per worker process (:mod:`exokiratory.models`); images of a
batch are read, decoded and preprocessed by threads while the model runs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps
from pydantic import Field

from exokiratory.engine.registry import register, register_alias
from exokiratory.engine.step import (
    IMAGE_UNITS_SQL,
    MODEL_MODULES,
    BatchContext,
    ImagePass,
    PassParams,
    PassSetupError,
    Resource,
    RoutedParams,
    missing_modules,
)
from exokiratory.engine.threads import ordered_results
from exokiratory.models.dims import embedding_dim
from exokiratory.models.registry import ModelSpec, model_slug, resolve

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.models.vision import ImageEmbedder, Preprocessing

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ROUTED_UNITS_SQL = (
    """
SELECT u.* FROM ("""
    + IMAGE_UNITS_SQL
    + """) u
JOIN images_routed r USING (image_id)
ORDER BY u.image_idx
"""
)


class ModelParams(PassParams):
    """Parameters shared by every embedding pass (images and segments)."""

    model: str = Field("lite", description="profile (full, lite, tiny), hub id, or local folder")
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_batch_size: int = Field(32, ge=1, description="images per forward; halves on OOM")
    storage_dtype: Literal["float16", "float32"] = "float16"
    decode_threads: int = Field(4, ge=1, le=64)


class EmbedParams(RoutedParams, ModelParams):
    """``passes.embed-clip`` / ``passes.embed-dino``: the model, and routed images only."""


@dataclass(frozen=True)
class EmbeddingModel:
    """The model side of an embedding pass, shared by the image and the segment passes: which
    checkpoint (:attr:`spec`), its embedding column type, loading it once per worker process
    (a failure is a :class:`PassSetupError`), and the stored vector column.

    Attributes:
        role: ``"clip"`` or ``"dino"``.
        params: the pass's validated parameters.
        pass_name: the pass's name, for error messages.
    """

    role: str
    params: ModelParams
    pass_name: str

    @property
    def spec(self) -> ModelSpec:
        spec = resolve(self.role, self.params.model)
        if self.params.revision is not None:
            spec = ModelSpec(spec.role, spec.model_id, self.params.revision, spec.space)
        return spec

    @property
    def value_type(self) -> pa.DataType:
        return pa.float16() if self.params.storage_dtype == "float16" else pa.float32()

    def embedding_type(self, workspace_url: str | None) -> pa.DataType:
        """A fixed-size list when the dimension is known without loading weights, else a list."""
        spec = self.spec
        folders = []
        if workspace_url is not None:
            folders.append(f"{cache_dir_for(workspace_url)}/{model_slug(spec.model_id)}")
        dim = embedding_dim(spec.role, spec.model_id, folders)
        return pa.list_(self.value_type, dim) if dim else pa.list_(self.value_type)

    @staticmethod
    def missing_requirement() -> str | None:
        return missing_modules(MODEL_MODULES, "ml")

    def load(self, workspace_url: str) -> ImageEmbedder:
        """The embedder (cached per process); a model that cannot be loaded stops the pass."""
        from exokiratory.models.vision import load_embedder

        try:
            embedder = load_embedder(self.spec, cache_dir_for(workspace_url), self.params.device)
        except Exception as exc:
            raise PassSetupError(
                f"cannot load model {self.spec.model_id!r}: {type(exc).__name__}: {exc}. "
                "Offline? Point passes."
                f"{self.pass_name}.model at a local folder, or use the 'tiny' profile for plumbing."
            ) from exc
        embedder.batch_size = self.params.forward_batch_size  # halves on CUDA OOM
        return embedder

    def embedding_array(self, vectors: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
        """``(n, dim)`` vectors as the stored column; rows where ``valid`` is false are null."""
        np_dtype = np.float16 if self.value_type == pa.float16() else np.float32
        flat = np.where(valid[:, None], vectors, 0).astype(np_dtype)
        values = pa.array(flat.reshape(-1), type=self.value_type)
        return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=pa.array(~valid))


class EmbeddingModelStep:
    """What the image and the segment embedding passes share: their model (by ``role`` and
    the ``model``/``revision``/``device``/dtype parameters), when they join ``run all``, what
    they need installed, and their ``embedding`` column."""

    role: ClassVar[str]
    name: ClassVar[str]
    workspace_url: str | None

    @property
    def model_params(self) -> ModelParams:
        params = getattr(self, "params")  # noqa: B009 - the Step's typed params
        if not isinstance(params, ModelParams):
            raise TypeError(f"{self.name}: parameters are not model parameters")
        return params

    @property
    def embedding_model(self) -> EmbeddingModel:
        return EmbeddingModel(self.role, self.model_params, self.name)

    @property
    def spec(self) -> ModelSpec:
        return self.embedding_model.spec

    def in_all(self, configured: bool) -> bool:
        """Model passes download weights: ``run all`` includes them only once the workspace
        config names them (``passes.embed-clip: {model: lite}``; the demo uses ``tiny``)."""
        return configured

    def missing_requirement(self) -> str | None:
        return self.embedding_model.missing_requirement()

    def model_version(self, version: str, suffix: str = "") -> str:
        return f"{version}:{self.spec.model_id}@{self.spec.revision or 'main'}{suffix}"

    def embedding_field(self) -> pa.Field:
        return pa.field("embedding", self.embedding_model.embedding_type(self.workspace_url))


class EmbedPass(EmbeddingModelStep, ImagePass[EmbedParams]):
    """Base of the CLIP and DINOv2 embedding passes."""

    dataset = "embeddings"
    version = "v1"
    stage = 1
    resources = Resource.GPU
    reads = ("flags",)  # images_routed
    Params = EmbedParams

    @property
    def view_name(self) -> str:
        return f"embeddings_{self.role}"

    @property
    def output_rel(self) -> str:
        return f"embeddings/{self.spec.space}/{model_slug(self.spec.model_id)}"

    @property
    def full_version(self) -> str:
        return self.model_version(self.version)

    def units(self, catalog: Catalog) -> pa.Table:
        if self.is_routed and "images_routed" in catalog.views:
            return catalog.query(ROUTED_UNITS_SQL)
        return catalog.query(IMAGE_UNITS_SQL)

    def _value_type(self) -> pa.DataType:
        return self.embedding_model.value_type

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("image_id", pa.string(), nullable=False),
                pa.field("image_idx", pa.int64(), nullable=False),
                self.embedding_field(),
                pa.field("model_id", pa.string()),
                pa.field("revision", pa.string()),
                pa.field("error", pa.string()),
            ]
        )

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        raise NotImplementedError("EmbedPass works on whole batches")  # pragma: no cover

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        params = self.params
        embedder = self.embedding_model.load(ctx.workspace_url)
        rows = units.to_pylist()

        spec = InputSpec(embedder.preprocessing, embedder.image_size, ctx.max_image_pixels)

        def prepare(unit: dict[str, Any]) -> np.ndarray | str:
            return prepare_file(unit["path"], unit.get("source"), ctx, spec)

        prepared: list[np.ndarray | str] = []
        good: list[int] = []
        chunks: list[np.ndarray] = []
        pending: list[int] = []

        def forward() -> None:
            if pending:
                chunks.append(embedder.embed_pixels(np.stack([prepared[i] for i in pending])))
                for i in pending:
                    prepared[i] = ""  # the pixels are no longer needed
                good.extend(pending)
                pending.clear()

        # Threads decode and preprocess up to two forward batches ahead while this thread runs
        # the model on the batch before: decode and inference overlap (bench/embed_overlap.py).
        # Once this batch's last image is queued, the first images of the next batch (when the
        # executor said which: lookahead) are queued too, so the model never waits for a
        # batch's first images.
        ahead = 2 * params.forward_batch_size
        if self._readahead is None:
            self._readahead = ReadAhead(params.decode_threads)
        upcoming = self._next_units
        items = self._readahead.ordered(prepare, rows, ahead, upcoming)
        for i, item in enumerate(items):
            prepared.append(item)
            if isinstance(item, np.ndarray):
                pending.append(i)
            if len(pending) >= params.forward_batch_size:
                forward()
        forward()
        if not upcoming:
            self.release()
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
        return self._table(rows, prepared, good, vectors)

    #: the decode threads of this pass in this process, kept across the batches of one run
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
        self, rows: list[dict[str, Any]], prepared: list[Any], good: list[int], vectors: np.ndarray
    ) -> pa.Table:
        schema = self.output_schema()
        valid = np.zeros(len(rows), bool)
        valid[good] = True
        flat = np.zeros((len(rows), vectors.shape[1]), np.float32)
        flat[good] = vectors
        emb = self.embedding_model.embedding_array(flat, valid)
        spec = self.spec
        table = pa.table(
            {
                "image_id": [r["image_id"] for r in rows],
                "image_idx": [r["image_idx"] for r in rows],
                "embedding": emb,
                "model_id": [spec.model_id if valid[i] else None for i in range(len(rows))],
                "revision": [spec.revision if valid[i] else None for i in range(len(rows))],
                "error": [None if valid[i] else str(prepared[i]) for i in range(len(rows))],
            }
        )
        return table.cast(schema)


@dataclass(frozen=True)
class InputSpec:
    """What turning a file into a model input needs (picklable: sent to decode processes)."""

    preprocessing: Preprocessing
    image_size: int
    max_pixels: int


def model_input(data: bytes, spec: InputSpec) -> np.ndarray:
    """Decode an image file (EXIF orientation applied, JPEG DCT-scaled to twice the model's
    input size) and preprocess it into the model's ``(C, H, W)`` float32 input.

    Raises:
        ValueError: for an image over ``spec.max_pixels`` (a decompression bomb).
    """
    from exokiratory.models.vision import preprocess_image

    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > spec.max_pixels:
            raise ValueError("decompression bomb: over the pixel limit")
        im.draft("RGB", (spec.image_size * 2, spec.image_size * 2))
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return preprocess_image(rgb, spec.preprocessing)


def prepare_file(
    path: str, source: str | None, ctx: BatchContext, spec: InputSpec
) -> np.ndarray | str:
    """The model input of one image file, or the error text (a bad image is a row)."""
    try:
        return model_input(ctx.read_bytes(path, source), spec)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


class ReadAhead:
    """Decode threads whose queued work may run past the end of a batch into the next one:
    ``fn`` of each unit, in order, at most ``ahead`` units in advance (bounded memory); when a
    batch's last unit is queued, the first ``ahead`` units of the next batch are queued too and
    handed over when that batch asks for them (keyed by ``image_id``: same bytes, same input)."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="exo-embed")
        self.early: dict[str, Future[Any]] = {}

    def ordered(
        self,
        fn: Callable[[dict[str, Any]], R],
        units: Sequence[dict[str, Any]],
        ahead: int,
        upcoming: Sequence[dict[str, Any]] | None = None,
    ) -> Iterator[R]:
        stale, self.early = self.early, {}

        def queue_upcoming() -> None:
            for unit in (upcoming or [])[:ahead]:
                self.early[unit["image_id"]] = self.pool.submit(fn, unit)

        return ordered_results(
            lambda unit: self._submit_from(stale, fn, unit), units, ahead, queue_upcoming
        )

    def _submit_from(
        self,
        early: dict[str, Future[Any]],
        fn: Callable[[dict[str, Any]], R],
        unit: dict[str, Any],
    ) -> Future[R]:
        fut = early.pop(unit["image_id"], None)
        return fut if fut is not None else self.pool.submit(fn, unit)

    def close(self) -> None:
        self.early.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)


def cache_dir_for(workspace_url: str) -> str:
    """Model weights live under the workspace's cache/models (local and mounted workspaces, so a
    new Colab kernel does not download them again); for object-store workspaces, which a model
    loader cannot write into, under ~/.cache/exokiratory."""
    if "://" in workspace_url and not workspace_url.startswith("file://"):
        import os

        return os.path.join(os.path.expanduser("~"), ".cache", "exokiratory")
    return f"{workspace_url.rstrip('/')}/cache/models"


@register
class ClipEmbedPass(EmbedPass):
    name = "embed-clip"
    role = "clip"
    description = "CLIP global image embeddings (ViT-L/14 full, ViT-B/32 lite)"


@register
class DinoEmbedPass(EmbedPass):
    name = "embed-dino"
    role = "dino"
    description = "DINOv2 global image embeddings (ViT-L/14 full, ViT-S/14 lite)"


register_alias("embed", ("embed-clip", "embed-dino"))
