"""``zeroshot``: CLIP zero-shot probabilities for every embedded image, from the prompt registry.

A derivation over the stored CLIP embeddings (view ``embeddings_clip``; no image is decoded):
the prompt set ``passes.zeroshot.prompt_set`` (default ``semantic-flags``) of the workspace's
``prompts/prompt_registry.yaml`` (:mod:`exokiratory.core.prompts`) is embedded with the text tower of
the *same* model as the ``embed-clip`` pass (its ``passes.embed-clip`` config); each class
vector is the re-normalised mean of its texts' unit vectors (prompt ensembling). For every image
``x`` (unit vector) and group ``g`` with class vectors ``c_k``:
``similarity_k = x . c_k`` and ``prob_k = softmax_k(logit_scale * similarity_k)`` with the
model's own ``logit_scale`` (exp of the learned temperature, 100 for OpenAI CLIP).

Output (``features/zeroshot/<version>-<fingerprint>/``, pointer ``features/zeroshot/CURRENT.json``,
view ``zeroshot``): one row per (image, group, class), long format so that any registry fits
one schema:

* ``image_id``, ``image_idx``; ``group_id``, ``class_id`` (registry ids);
* ``similarity`` (cosine, float32), ``prob`` (float32; sums to 1 over a group's classes);
* ``prompt_set_id``, ``prompt_set_version`` (``<version>+<digest>``, changes with any edit),
  ``group_version``; ``model_id``, ``revision`` (the CLIP checkpoint).

The fingerprint covers the embeddings' parts, the prompt set's content and the model, so an
edited prompt or another CLIP model re-derives; nothing else does. Needs torch and
transformers (the ``ml`` extra); in ``run all`` only when ``embed-clip`` is configured.

Example: ``SELECT image_id, prob FROM zeroshot WHERE group_id = 'human' AND class_id = 'person'
ORDER BY prob DESC``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.core.prompts import (
    DEFAULT_SET,
    PromptRegistryError,
    PromptSet,
    load_registry,
    registry_text,
)
from exokiratory.engine.registry import register
from exokiratory.engine.step import (
    MODEL_MODULES,
    Derivation,
    PassParams,
    Step,
    missing_modules,
)
from exokiratory.models.registry import ModelSpec, resolve
from exokiratory.passes.embed.step import EmbedPass
from exokiratory.search.indices import embedding_matrix

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

ZEROSHOT_DATASET = "features/zeroshot"

ZEROSHOT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("class_id", pa.string(), nullable=False),
        pa.field("similarity", pa.float32()),
        pa.field("prob", pa.float32()),
        pa.field("prompt_set_id", pa.string()),
        pa.field("prompt_set_version", pa.string()),
        pa.field("group_version", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("revision", pa.string()),
    ]
)

EMBEDDINGS_SQL = """
SELECT image_id, image_idx, embedding FROM embeddings_clip
WHERE error IS NULL AND embedding IS NOT NULL
ORDER BY image_idx
"""


class ZeroShotParams(PassParams):
    prompt_set: str = Field(
        DEFAULT_SET, description="prompt set id in prompts/prompt_registry.yaml"
    )
    batch_rows: int = Field(65_536, ge=1, description="embeddings scored per chunk")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="for the CLIP text tower")


class ClassVectors:
    """The class vectors of a prompt set: one row per (group, class), groups contiguous."""

    def __init__(self, pset: PromptSet, embed_texts: Any):
        self.pset = pset
        self.group_ids: list[str] = []
        self.class_ids: list[str] = []
        self.group_versions: list[str] = []
        #: (start, stop) row range of each group in :attr:`matrix`
        self.spans: list[tuple[int, int]] = []
        rows: list[np.ndarray] = []
        for g in pset.groups:
            start = len(rows)
            for c in g.classes:
                vecs = np.asarray(embed_texts(g.texts(c)), np.float32)
                mean = vecs.mean(axis=0)
                rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                self.group_ids.append(g.id)
                self.class_ids.append(c.id)
                self.group_versions.append(g.version)
            self.spans.append((start, len(rows)))
        self.matrix = np.stack(rows).astype(np.float32)

    def score(self, emb: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and per-group softmax probabilities, both ``(n_images, n_classes)``."""
        sims = emb.astype(np.float32) @ self.matrix.T
        probs = np.empty_like(sims)
        for start, stop in self.spans:
            z = logit_scale * sims[:, start:stop]
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            probs[:, start:stop] = e / e.sum(axis=1, keepdims=True)
        return sims, probs


def _batches(catalog: Catalog, sql: str, rows: int) -> Iterator[pa.RecordBatch]:
    """Stream a query's result in record batches (DuckDB 1.x and 2.x spell it differently)."""
    rel = catalog.con.sql(sql)
    name = next(
        (n for n in ("to_arrow_reader", "fetch_record_batch", "record_batch") if hasattr(rel, n)),
        "record_batch",
    )
    reader: pa.RecordBatchReader = getattr(rel, name)(rows)
    yield from reader


@register
class ZeroShotDerivation(Derivation[ZeroShotParams]):
    name = "zeroshot"
    dataset = ZEROSHOT_DATASET
    version = "v1"
    stage = 2
    reads = ("embed-clip",)
    Params = ZeroShotParams
    description = "CLIP zero-shot probabilities per image from prompts/prompt_registry.yaml"

    def __init__(self, params: dict[str, Any] | None = None):
        super().__init__(params)
        self.spec: ModelSpec = resolve("clip", "lite")

    def bind(self, steps: Sequence[Step[Any]]) -> None:
        """Read the embeddings of the configured ``embed-clip`` pass and use its model."""
        super().bind(steps)
        for s in steps:
            if isinstance(s, EmbedPass) and s.name == "embed-clip":
                self.spec = s.spec

    def in_all(self, configured: bool) -> bool:
        """Only once ``embed-clip`` is configured (the workspace passes its dependency's)."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(MODEL_MODULES, "ml")

    def output_schema(self) -> pa.Schema:
        return ZEROSHOT_SCHEMA

    def prompt_set(self, storage: Storage) -> PromptSet:
        params = self.params
        return load_registry(storage).get(params.prompt_set)

    def extra_fingerprint(self, storage: Storage) -> str:
        """The prompt set's content digest and the CLIP model (both change the rows). An invalid
        registry fingerprints as its raw text (``status`` still works; the derivation itself
        then fails with the validation error)."""
        try:
            pset = self.prompt_set(storage)
            prompts = f"{pset.id}:{pset.digest}"
        except PromptRegistryError:
            prompts = hashlib.sha256(registry_text(storage).encode()).hexdigest()
        return json.dumps(
            {"prompts": prompts, "model": self.spec.model_id, "revision": self.spec.revision},
            sort_keys=True,
        )

    def derive(self, catalog: Catalog) -> pa.Table:
        from exokiratory.models.vision import ClipEmbedder, load_embedder
        from exokiratory.passes.embed.step import cache_dir_for

        if "embeddings_clip" not in catalog.views:
            raise RuntimeError("zeroshot needs CLIP embeddings: run `exokiratory run embed-clip`")
        params = self.params
        pset = self.prompt_set(catalog.storage)
        try:
            embedder = load_embedder(self.spec, cache_dir_for(catalog.storage.url), params.device)
        except Exception as exc:
            raise RuntimeError(
                f"zeroshot: cannot load the CLIP model {self.spec.model_id!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(embedder, ClipEmbedder):
            raise RuntimeError(f"zeroshot: {self.spec.model_id!r} has no text tower")
        vectors = ClassVectors(pset, embedder.embed_texts)
        scale = float(embedder.model.logit_scale.detach().exp().clamp(max=100.0).item())
        tables = []
        for batch in _batches(catalog, EMBEDDINGS_SQL, params.batch_rows):
            if batch.num_rows == 0:
                continue
            emb = embedding_matrix(batch.column(2))
            if emb.shape[1] != vectors.matrix.shape[1]:
                raise RuntimeError(
                    f"zeroshot: stored CLIP embeddings have {emb.shape[1]} dimensions, the text "
                    f"tower of {self.spec.model_id!r} {vectors.matrix.shape[1]}: rerun embed-clip"
                )
            sims, probs = vectors.score(emb, scale)
            tables.append(self._rows(batch, sims, probs, vectors, pset))
        if not tables:
            return ZEROSHOT_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def _rows(
        self,
        batch: pa.RecordBatch,
        sims: np.ndarray,
        probs: np.ndarray,
        vectors: ClassVectors,
        pset: PromptSet,
    ) -> pa.Table:
        n, k = sims.shape
        img = np.repeat(np.arange(n), k)
        cls = np.tile(np.arange(k), n)
        ids = batch.column(0).take(pa.array(img))
        idx = batch.column(1).take(pa.array(img))
        return pa.table(
            {
                "image_id": ids,
                "image_idx": idx,
                "group_id": pa.array(vectors.group_ids, pa.string()).take(pa.array(cls)),
                "class_id": pa.array(vectors.class_ids, pa.string()).take(pa.array(cls)),
                "similarity": pa.array(sims.reshape(-1), pa.float32()),
                "prob": pa.array(probs.reshape(-1), pa.float32()),
                "prompt_set_id": pa.array([pset.id] * (n * k), pa.string()),
                "prompt_set_version": pa.array([pset.full_version] * (n * k), pa.string()),
                "group_version": pa.array(vectors.group_versions, pa.string()).take(pa.array(cls)),
                "model_id": pa.array([self.spec.model_id] * (n * k), pa.string()),
                "revision": pa.array([self.spec.revision] * (n * k), pa.string()),
            },
            schema=ZEROSHOT_SCHEMA,
        )
