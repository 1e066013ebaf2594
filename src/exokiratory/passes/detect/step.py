"""``detect`` (PASS 6): open-vocabulary detection (OWLv2) where counting matters.

Routing (:mod:`exokiratory.engine.routing`): by default ``passes.detect.route`` =
:data:`DEFAULT_ROUTE`, the images worth GPU time that the flags call dense scenes. Queries come
from the prompt registry (``prompts/prompt_registry.yaml``, set ``passes.detect.prompt_set`` =
``detection``; each class of its groups is a label, each of its texts a query: see
:mod:`exokiratory.core.prompts`); when the workspace's registry predates that set, the packaged
default's set of that id is used. The set's ``<version>+<digest>`` is part of the output folder's
version, so an edited query list writes a new dataset. Each image is decoded once (longer side at
most ``decode_side``), padded to a square and resized to the model's input
(:mod:`exokiratory.models.detect`); post-processing: :mod:`exokiratory.passes.detect.boxes`.

Columns: ``detections`` (list of ``{label, query, score, x0, y0, x1, y1}``, boxes in original
image pixels, best first), ``n_detections``, ``labels`` (every label queried), the thresholds
``score_threshold`` and ``nms_iou`` (with the rows), ``prompt_set_id``, ``prompt_set_version``,
``model_id`` (``tiny:detect`` = random weights: plumbing, never meaning), ``revision``, ``error``.

View ``detect_counts``: one row per (image, label) with ``count`` = detections of that label at
score >= ``count_threshold`` (= max(``passes.detect.count_threshold``, ``score_threshold``),
stored in the row), zeros included.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.registry import register
from exokiratory.engine.routing import decoded_inputs
from exokiratory.engine.step import (
    BatchContext,
    PassSetupError,
)
from exokiratory.passes.depth.step import (
    SelectiveModelParams,
    SelectiveModelPass,
    model_version,
)
from exokiratory.passes.detect.boxes import Queries, detections

if TYPE_CHECKING:
    from exokiratory.core.prompts import PromptRegistry, PromptSet
    from exokiratory.models.detect import Detector

log = logging.getLogger(__name__)

DEFAULT_ROUTE = "f.is_worth_gpu AND f.is_dense_scene"
DEFAULT_PROMPT_SET = "detection"

DETECTION = pa.struct(
    [
        pa.field("label", pa.string()),
        pa.field("query", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("x0", pa.float32()),
        pa.field("y0", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
    ]
)

DETECT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("detections", pa.list_(DETECTION)),
        pa.field("n_detections", pa.int32()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("score_threshold", pa.float32()),
        pa.field("nms_iou", pa.float32()),
        pa.field("prompt_set_id", pa.string()),
        pa.field("prompt_set_version", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("revision", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class DetectParams(SelectiveModelParams):
    model: str = Field(
        "lite",
        description="profile (lite = full = owlv2-base, owlv2-large, tiny: random weights), hub "
        "id, or local folder",
    )
    route: str = Field(DEFAULT_ROUTE, description="SQL condition over the flags view (alias f)")
    forward_batch_size: int = Field(4, ge=1, description="images per forward; halves on OOM")
    prompt_set: str = Field(DEFAULT_PROMPT_SET, description="prompt set id (the queries)")
    score_threshold: float = Field(0.1, gt=0, lt=1, description="detections kept from this score")
    nms_iou: float = Field(0.5, gt=0, le=1, description="per-label non-maximum suppression IoU")
    max_detections: int = Field(100, ge=1, le=10_000, description="per image, best first")
    count_threshold: float = Field(0.3, gt=0, lt=1, description="detect_counts: score to count")


#: parameters that only shape the views
VIEW_ONLY = ("count_threshold",)


def load_prompt_set(workspace_url: str | None, set_id: str) -> PromptSet:
    """The workspace's prompt set ``set_id``, else the packaged default's (see the module
    docstring). Parsed registries are cached by their text (a catalog makes a new step
    object per build)."""
    from exokiratory.core.prompts import PromptRegistryError, registry_text
    from exokiratory.core.prompts.registry import default_registry_text
    from exokiratory.core.storage import Storage

    if workspace_url is not None:
        try:
            storage = Storage(workspace_url)
            text = registry_text(storage)
        except PromptRegistryError:
            raise
        except Exception as exc:  # a remote workspace this step cannot open without options
            log.debug("detect: cannot read the workspace's prompt registry (%s)", exc)
            return _parsed(default_registry_text(), "packaged default").get(set_id)
        try:
            return _parsed(text, storage.url).get(set_id)
        except PromptRegistryError as exc:
            if "no prompt set" not in str(exc):
                raise
            log.debug("detect: %s; using the packaged default's", exc)
    return _parsed(default_registry_text(), "packaged default").get(set_id)


def _registry_digest(workspace_url: str | None) -> str:
    import hashlib

    from exokiratory.core.prompts import registry_text
    from exokiratory.core.storage import Storage

    text = registry_text(Storage(workspace_url)) if workspace_url else ""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=8)
def _parsed(text: str, where: str) -> PromptRegistry:
    from exokiratory.core.prompts.registry import REGISTRY_FILE, parse_registry

    return parse_registry(text, f"{where.rstrip('/')}/{REGISTRY_FILE}")


def queries_of(pset: PromptSet) -> Queries:
    labels: list[str] = []
    texts: list[str] = []
    label_of: list[int] = []
    for g in pset.groups:
        for c in g.classes:
            if c.id not in labels:
                labels.append(c.id)
            for text in g.texts(c):
                texts.append(text)
                label_of.append(labels.index(c.id))
    return Queries(labels, texts, label_of)


@register
class DetectPass(SelectiveModelPass[DetectParams]):
    name = "detect"
    dataset = "semantics/detect"
    version = "v1"
    stage = 6
    role = "detect"
    Params = DetectParams
    description = "open-vocabulary detection (OWLv2) of the routed dense scenes"
    _pset: PromptSet | None = None

    @property
    def prompt_set(self) -> PromptSet:
        if self._pset is None:
            self._pset = load_prompt_set(self.workspace_url, self.params.prompt_set)
        return self._pset

    @property
    def full_version(self) -> str:
        """``<version>-<model>[-<params digest>]-<set id><set version>+<digest>``; with an
        invalid registry, ``...-<set id>-invalid<digest of its text>`` (``status`` still works;
        the pass itself then fails with the validation error)."""
        from exokiratory.core.prompts import PromptRegistryError

        base = model_version(self.version, self.spec, _rows_params(self.params))
        try:
            pset = self.prompt_set
        except PromptRegistryError:
            return f"{base}-{self.params.prompt_set}-invalid{_registry_digest(self.workspace_url)}"
        return f"{base}-{pset.id}{pset.full_version}"

    def output_schema(self) -> pa.Schema:
        return DETECT_SCHEMA

    def extra_views(self) -> dict[str, str]:
        return {"detect_counts": counts_sql(self.params.count_threshold)}

    def _detector(self, ctx: BatchContext) -> Detector:
        from exokiratory.models.detect import load_detector

        return self.load_model(ctx, load_detector)

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        from exokiratory.core.prompts import PromptRegistryError

        p = self.params
        try:
            queries = queries_of(self.prompt_set)
        except PromptRegistryError as exc:
            raise PassSetupError(f"detect: {exc}") from exc
        det = self._detector(ctx)
        tokens = det.tokens(queries.texts)
        rows = units.to_pylist()
        out: list[dict[str, Any]] = [{} for _ in rows]
        pending: list[tuple[int, Any, np.ndarray]] = []

        def forward() -> None:
            results = det.detect(np.stack([x for _, _, x in pending]), tokens) if pending else []
            for (i, img, _), (boxes, logits) in zip(pending, results, strict=True):
                h, w = img.rgb.shape[:2]
                found = detections(
                    boxes,
                    logits,
                    queries,
                    score_threshold=p.score_threshold,
                    nms_iou=p.nms_iou,
                    max_detections=p.max_detections,
                    to_pixels=max(h, w) * img.width / w,
                    width=img.width,
                    height=img.height,
                )
                out[i] = {"detections": found, "n_detections": len(found)}
            pending.clear()

        for i, item in enumerate(
            decoded_inputs(rows, ctx, det.pixels, p.decode_side, p.decode_threads)
        ):
            if isinstance(item, str):
                out[i] = {"error": item}
                continue
            pending.append((i, item[0], item[1]))
            if len(pending) >= p.forward_batch_size:
                forward()
        forward()
        return self._table(rows, out, queries)

    def _table(
        self, rows: list[dict[str, Any]], out: list[dict[str, Any]], queries: Queries
    ) -> pa.Table:
        spec, p, pset = self.spec, self.params, self.prompt_set
        for r, o in zip(rows, out, strict=True):
            ok = "error" not in o
            o.update(image_id=r["image_id"], image_idx=r["image_idx"])
            o.update(
                labels=queries.labels if ok else None,
                score_threshold=p.score_threshold if ok else None,
                nms_iou=p.nms_iou if ok else None,
                prompt_set_id=pset.id if ok else None,
                prompt_set_version=pset.full_version if ok else None,
                model_id=spec.model_id if ok else None,
                revision=spec.revision if ok else None,
            )
            o.setdefault("error", None)
        return pa.Table.from_pylist(out, schema=DETECT_SCHEMA)


def _rows_params(params: DetectParams) -> DetectParams:
    """The parameters without the view-only ones (so they stay out of the version)."""
    defaults = DetectParams.model_fields
    return params.model_copy(update={k: defaults[k].default for k in VIEW_ONLY})


def counts_sql(count_threshold: float) -> str:
    """The ``detect_counts`` view (see the module docstring)."""
    ct = float(count_threshold)
    return f"""
WITH q AS (SELECT image_id, image_idx, unnest(labels) AS label,
                  greatest(score_threshold, {ct}) AS count_threshold
           FROM detect WHERE error IS NULL),
d AS (SELECT image_id, unnest(detections) AS x FROM detect WHERE error IS NULL)
SELECT q.image_id, q.image_idx, q.label, CAST(count(d.x) AS INTEGER) AS count,
       CAST(q.count_threshold AS FLOAT) AS count_threshold
FROM q LEFT JOIN d ON d.image_id = q.image_id AND d.x.label = q.label
                   AND d.x.score >= q.count_threshold
GROUP BY ALL
ORDER BY q.image_idx, q.label
"""
