"""Semantic routing flags: modality, text-heavy, human present, dense scene.

Pure functions from the joined per-image inputs to flag columns; part of the PASS 2 flags
(rules ``text_heavy`` and ``semantic`` of :mod:`exokiratory.passes.cues.flag_rules`), thresholds
in ``passes.flags`` (:class:`SemanticFlagsParams`). Three kinds of evidence, each used when it
exists for an image and skipped otherwise:

* PASS 1 signals (always, for sensed images; :mod:`exokiratory.passes.sense.signals`);
* detector cues (the ``cues`` pass: rapidocr's text detector, OpenCV's face cascade;
  ``exokiratory[cues]``);
* CLIP zero-shot probabilities (the ``zeroshot`` derivation over ``embed-clip`` with the prompt
  set of ``prompts/prompt_registry.yaml``: groups ``modality``, ``human``, ``density``, ``text``).

``clip(x)`` below is clipping to [0, 1]; ``w`` = ``zeroshot_weight`` (0.4). Shaping constants
were set on the labelled images of ``bench/semantic_flags_agreement.py`` (no held-out set).

* Text evidence: ``text_cue = max(text_likeness_score, clip(text_area_fraction /
  text_area_full_fraction))`` (``text_area_full_fraction`` = 0.15: a page of body text covers
  15-40 % of its area with detected text boxes, photos under 4 %); without cues it is the PASS 1
  ``text_likeness_score`` alone.
* ``text_heavy_score`` = ``text_cue``, or ``(1 - w) text_cue + w p(text = text_heavy)`` with
  zero-shot; ``is_text_heavy`` when >= ``text_heavy_threshold`` (0.6). Without cues and
  zero-shot this is exactly the PASS 1 rule (text_likeness_score >= 0.6).
* Modality cue scores (each in [0, 1], then divided by their sum):
  ``photo = max(clip(log10(n_colors) - 3), clip((entropy_score - 4) / 2) *
  clip((noise_score - 0.2) / 0.6)) * (1 - text_cue)`` (many distinct colours, or rich tones with
  sensor-like noise); ``scan = text_cue * paper`` with ``paper = clip((brightness_p50 - 0.6) /
  0.3) * clip(1 - saturation_mean / 0.2)`` (text on a light, unsaturated page);
  ``graphic = max(clip(1 - noise_score / 0.8), clip(1 - (entropy_score - 1) / 4)) *
  (1 - text_cue)`` (flat, noise-free or few tones). With zero-shot, each becomes ``(1 - w) cue
  + w p`` where ``p`` are the zero-shot probabilities of ``photo``, ``scan``, ``graphic``
  renormalised over these three (other classes of the ``modality`` group are ignored here).
  Columns ``modality_photo_score``, ``modality_scan_score``, ``modality_graphic_score`` (sum 1);
  ``modality`` = the arg-max (``photo``, ``scan`` or ``graphic``; ties: that order);
  ``is_photo``, ``is_scan``, ``is_graphic`` = ``modality`` is that class.
* ``human_present_score`` = noisy OR of the faces and the zero-shot probability:
  ``1 - (1 - face_confidence * [n_faces > 0]) (1 - p(human = person))`` with
  ``face_confidence`` = 0.9, each factor present only when its input exists; null when neither
  exists (no cues row and no zero-shot row). ``is_human_present`` when >=
  ``human_present_threshold`` (0.5): without zero-shot that is "a face was found". The Haar
  cascade finds frontal faces only, so "no face" is weak evidence.
* ``dense_scene_score`` = ``clip(edge_density / dense_edge_density) * clip((entropy_score - 4)
  / 3)`` (``dense_edge_density`` = 0.25; the entropy factor keeps text pages and flat graphics,
  which have many edges but few tones, out), or ``(1 - w) cue + w p(density = dense)`` with
  zero-shot; ``is_dense_scene`` when >= ``dense_scene_threshold`` (0.5). (PASS 3 segment counts
  will join this score when segments exist.)
* ``semantic_inputs``: which evidence the row used, ``pass1`` plus ``+cues`` / ``+zeroshot``.

Zero-shot probabilities of a random-weight ``tiny`` CLIP (tests, the offline demo) are stored by
the ``zeroshot`` derivation but never used here.

Images that were not sensed get nulls (and False flags), like every other flag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.flag_rules import align_rows
from exokiratory.engine.step import PassParams
from exokiratory.models.registry import TINY_PREFIX

MODALITIES: tuple[str, ...] = ("photo", "scan", "graphic")

#: PASS 1 columns the rules read (the flags input query selects them).
PASS1_COLUMNS: tuple[str, ...] = (
    "text_likeness_score",
    "noise_score",
    "n_colors",
    "entropy_score",
    "saturation_mean",
    "brightness_p50",
    "edge_density",
)

#: Columns of the semantic inputs table (:func:`semantic_inputs_sql`), besides ``image_id``.
CUE_COLUMNS: tuple[str, ...] = ("text_area_fraction", "n_faces")
ZEROSHOT_COLUMNS: dict[str, tuple[str, str]] = {
    "zs_photo": ("modality", "photo"),
    "zs_scan": ("modality", "scan"),
    "zs_graphic": ("modality", "graphic"),
    "zs_person": ("human", "person"),
    "zs_dense": ("density", "dense"),
    "zs_text_heavy": ("text", "text_heavy"),
}

#: New flag columns (``text_heavy_score`` and ``is_text_heavy`` are in the flags table already).
SEMANTIC_FIELDS: tuple[pa.Field, ...] = (
    pa.field("modality", pa.string()),
    pa.field("modality_photo_score", pa.float32()),
    pa.field("modality_scan_score", pa.float32()),
    pa.field("modality_graphic_score", pa.float32()),
    pa.field("is_photo", pa.bool_()),
    pa.field("is_scan", pa.bool_()),
    pa.field("is_graphic", pa.bool_()),
    pa.field("human_present_score", pa.float32()),
    pa.field("is_human_present", pa.bool_()),
    pa.field("dense_scene_score", pa.float32()),
    pa.field("is_dense_scene", pa.bool_()),
    pa.field("semantic_inputs", pa.string()),
)


class TextHeavyParams(PassParams):
    """The text-heavy threshold (the hash near-duplicates use it too)."""

    text_heavy_threshold: float = Field(0.6, ge=0, le=1)


class SemanticFlagsParams(TextHeavyParams):
    """Thresholds of the semantic flags (fields of ``passes.flags``; see the module docstring)."""

    text_area_full_fraction: float = Field(
        0.15, gt=0, le=1, description="detected text area giving full text evidence"
    )
    zeroshot_weight: float = Field(
        0.4, ge=0, le=1, description="weight of zero-shot probabilities in the semantic scores"
    )
    face_confidence: float = Field(0.9, ge=0, le=1, description="evidence of a detected face")
    human_present_threshold: float = Field(0.5, ge=0, le=1)
    dense_edge_density: float = Field(
        0.25, gt=0, le=1, description="edge density giving full clutter evidence"
    )
    dense_scene_threshold: float = Field(0.5, ge=0, le=1)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _f(t: pa.Table | None, name: str, n: int) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls; all-NaN when absent."""
    if t is None or name not in t.column_names:
        return np.full(n, np.nan)
    return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _mix(cue: np.ndarray, zs: np.ndarray, w: float) -> np.ndarray:
    """``(1 - w) cue + w zs`` where the zero-shot value exists, else the cue."""
    return np.where(np.isfinite(zs), (1 - w) * cue + w * zs, cue)


def _f32(x: np.ndarray) -> pa.Array:
    return pa.array(np.where(np.isfinite(x), x, np.nan).astype(np.float32), from_pandas=True)


@dataclass(frozen=True)
class Evidence:
    """The inputs of the semantic flags, as float64 arrays aligned with the rows (NaN where
    missing)."""

    col: dict[str, np.ndarray]
    area: np.ndarray
    faces: np.ndarray
    zs: dict[str, np.ndarray]

    @classmethod
    def of(cls, t: pa.Table, inputs: pa.Table | None) -> Evidence:
        n = t.num_rows
        return cls(
            col={c: _f(t, c, n) for c in PASS1_COLUMNS},
            area=_f(inputs, "text_area_fraction", n),
            faces=_f(inputs, "n_faces", n),
            zs={c: _f(inputs, c, n) for c in ZEROSHOT_COLUMNS},
        )

    @property
    def has_cues(self) -> np.ndarray:
        return np.isfinite(self.area) & np.isfinite(self.faces)

    @property
    def has_zs(self) -> np.ndarray:
        return np.isfinite(self.zs["zs_photo"]) | np.isfinite(self.zs["zs_person"])

    def text_cue(self, p: SemanticFlagsParams) -> np.ndarray:
        """PASS 1 text likeness, raised by the detected text area where cues exist."""
        text_likeness = np.nan_to_num(self.col["text_likeness_score"], nan=0.0)
        area = _clip(self.area / p.text_area_full_fraction)
        return np.where(self.has_cues, np.maximum(text_likeness, area), text_likeness)


def semantic_flag_columns(
    t: pa.Table, p: SemanticFlagsParams, sensed: np.ndarray, inputs: pa.Table | None = None
) -> dict[str, pa.Array]:
    """``text_heavy_score``, ``is_text_heavy`` and every :data:`SEMANTIC_FIELDS` column.

    Args:
        t: one row per image with the :data:`PASS1_COLUMNS`.
        p: the thresholds.
        sensed: which rows have PASS 1 signals (others get nulls and False).
        inputs: cue and zero-shot columns aligned with ``t`` (see :func:`align_inputs`), or
            None when neither exists.
    """
    return in_slices((text_heavy_columns, semantic_columns), t, inputs, p, sensed)


#: rows per slice of :func:`in_slices` (the semantic rules' float64 temporaries cost ~260 B a
#: row: 2.6 GB at 10^7 rows in one piece)
SLICE_ROWS = 1 << 20


def in_slices(
    fns: Sequence[Callable[[Evidence, SemanticFlagsParams, np.ndarray], dict[str, pa.Array]]],
    t: pa.Table,
    inputs: pa.Table | None,
    p: SemanticFlagsParams,
    sensed: np.ndarray,
) -> dict[str, pa.Array]:
    """The columns of every ``fn(Evidence.of(rows), p, sensed[rows])`` over slices of
    :data:`SLICE_ROWS` rows (one :class:`Evidence` per slice, shared), concatenated: the same
    columns as one call (every computation of these rules is per row), holding one slice's
    temporaries at a time."""
    parts = []
    for lo in range(0, max(t.num_rows, 1), SLICE_ROWS):
        rows = None if inputs is None else inputs.slice(lo, SLICE_ROWS)
        ev = Evidence.of(t.slice(lo, SLICE_ROWS), rows)
        part: dict[str, pa.Array] = {}
        for fn in fns:
            part |= fn(ev, p, sensed[lo : lo + SLICE_ROWS])
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return {name: pa.concat_arrays([part[name] for part in parts]) for name in parts[0]}


def text_heavy_columns(
    ev: Evidence, p: SemanticFlagsParams, sensed: np.ndarray
) -> dict[str, pa.Array]:
    """``text_heavy_score`` and ``is_text_heavy``."""
    text_score = _mix(ev.text_cue(p), ev.zs["zs_text_heavy"], p.zeroshot_weight)
    text_score[~sensed] = np.nan
    with np.errstate(invalid="ignore"):
        return {
            "text_heavy_score": _f32(text_score),
            "is_text_heavy": pa.array(sensed & (text_score >= p.text_heavy_threshold)),
        }


def semantic_columns(
    ev: Evidence, p: SemanticFlagsParams, sensed: np.ndarray
) -> dict[str, pa.Array]:
    """Every :data:`SEMANTIC_FIELDS` column."""
    w, unsensed = p.zeroshot_weight, ~sensed
    modality_scores = _modality_scores(ev.col, ev.text_cue(p), ev.zs, w)
    best = np.argmax(modality_scores, axis=1)
    human, human_known = _human_present(ev, p, sensed)
    clutter = _clip(np.nan_to_num(ev.col["edge_density"]) / p.dense_edge_density) * _clip(
        (np.nan_to_num(ev.col["entropy_score"]) - 4.0) / 3.0
    )
    dense = _mix(clutter, ev.zs["zs_dense"], w)
    modality_scores[unsensed] = np.nan
    dense[unsensed] = np.nan
    modality = pa.array(MODALITIES, pa.string()).take(pa.array(best, mask=unsensed))
    with np.errstate(invalid="ignore"):
        return {
            "modality": modality,
            **{
                f"modality_{m}_score": _f32(modality_scores[:, k]) for k, m in enumerate(MODALITIES)
            },
            **{f"is_{m}": pa.array(sensed & (best == k)) for k, m in enumerate(MODALITIES)},
            "human_present_score": _f32(human),
            "is_human_present": pa.array(human_known & (human >= p.human_present_threshold)),
            "dense_scene_score": _f32(dense),
            "is_dense_scene": pa.array(sensed & (dense >= p.dense_scene_threshold)),
            "semantic_inputs": _sources(ev, unsensed),
        }


def _sources(ev: Evidence, unsensed: np.ndarray) -> pa.Array:
    """``pass1``, ``+cues`` where cues exist, ``+zeroshot`` where zero-shot rows exist; null for
    unsensed rows (a dictionary of the four strings, taken: no Python string per row)."""
    names = pa.array(["pass1", "pass1+cues", "pass1+zeroshot", "pass1+cues+zeroshot"])
    code = ev.has_cues.astype(np.int64) + 2 * ev.has_zs.astype(np.int64)
    return names.take(pa.array(code, mask=unsensed))


def _human_present(
    ev: Evidence, p: SemanticFlagsParams, sensed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy-OR score, NaN where unknown; whether it is known)."""
    has_cues = ev.has_cues
    face_term = np.where(ev.faces > 0, p.face_confidence, 0.0)
    no_person = np.ones(len(has_cues))
    no_person = np.where(has_cues, no_person * (1 - face_term), no_person)
    person = ev.zs["zs_person"]
    no_person = np.where(np.isfinite(person), no_person * (1 - person), no_person)
    human_known = sensed & (has_cues | np.isfinite(person))
    return np.where(human_known, 1 - no_person, np.nan), human_known


def _modality_scores(
    col: dict[str, np.ndarray], text_cue: np.ndarray, zs: dict[str, np.ndarray], w: float
) -> np.ndarray:
    """``(n, 3)`` photo / scan / graphic scores summing to 1 (see the module docstring)."""
    entropy = np.nan_to_num(col["entropy_score"])
    noise = np.nan_to_num(col["noise_score"])
    colours = np.maximum(np.nan_to_num(col["n_colors"], nan=1.0), 1.0)
    not_text = 1 - text_cue
    photo = (
        np.maximum(
            _clip(np.log10(colours) - 3.0),
            _clip((entropy - 4.0) / 2.0) * _clip((noise - 0.2) / 0.6),
        )
        * not_text
    )
    paper = _clip((np.nan_to_num(col["brightness_p50"]) - 0.6) / 0.3) * _clip(
        1 - np.nan_to_num(col["saturation_mean"]) / 0.2
    )
    scan = text_cue * paper
    graphic = np.maximum(_clip(1 - noise / 0.8), _clip(1 - (entropy - 1.0) / 4.0)) * not_text
    cue = _normalise(np.stack([photo, scan, graphic], axis=1))
    z = np.stack([zs["zs_photo"], zs["zs_scan"], zs["zs_graphic"]], axis=1)
    known = np.isfinite(z).all(axis=1)
    z = _normalise(np.where(known[:, None], z, 0.0))
    mixed = np.where(known[:, None], (1 - w) * cue + w * z, cue)
    return _normalise(mixed)


def _normalise(s: np.ndarray) -> np.ndarray:
    """Rows divided by their sum; an all-zero row becomes uniform."""
    total = s.sum(axis=1, keepdims=True)
    return np.where(total > 1e-12, s / np.maximum(total, 1e-12), 1.0 / s.shape[1])


def semantic_inputs_sql(views: list[str] | tuple[str, ...]) -> str | None:
    """SQL giving one row per image with the cue and zero-shot columns the rules read, from the
    views that exist (``cues``, ``zeroshot``); None when neither does. Zero-shot rows of a
    random-weight ``tiny`` CLIP are left out (their probabilities mean nothing)."""
    parts = []
    if "cues" in views:
        parts.append(
            "SELECT image_id, "
            + ", ".join(CUE_COLUMNS)
            + ", "
            + ", ".join(f"NULL::FLOAT AS {c}" for c in ZEROSHOT_COLUMNS)
            + " FROM cues WHERE error IS NULL"
        )
    if "zeroshot" in views:
        pivots = ", ".join(
            f"max(prob) FILTER (WHERE group_id = '{g}' AND class_id = '{c}') AS {name}"
            for name, (g, c) in ZEROSHOT_COLUMNS.items()
        )
        parts.append(
            "SELECT image_id, "
            + ", ".join(f"NULL::DOUBLE AS {c}" for c in CUE_COLUMNS)
            + f", {pivots} FROM zeroshot WHERE model_id NOT LIKE '{TINY_PREFIX}%'"
            + " GROUP BY image_id"
        )
    if not parts:
        return None
    cols = ", ".join(f"max({c}) AS {c}" for c in (*CUE_COLUMNS, *ZEROSHOT_COLUMNS))
    return f"SELECT image_id, {cols} FROM ({' UNION ALL '.join(parts)}) GROUP BY image_id"


def align_inputs(ids: pa.Array | pa.ChunkedArray, inputs: pa.Table) -> pa.Table:
    """``inputs`` (keyed by ``image_id``) re-ordered to ``ids``; null rows where missing."""
    return align_rows(ids, inputs)
