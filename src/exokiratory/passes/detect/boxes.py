"""From OWLv2's per-patch outputs to the kept detections of one image (pure numpy).

OWLv2 predicts one box per image patch and a logit per (patch, text query). Here:

1. ``score = sigmoid(logit)``; a label's score of a box is the best score among the label's
   queries (a label may have several prompts), and ``query`` records which one.
2. Per label, boxes scoring at least ``score_threshold`` are kept after greedy non-maximum
   suppression at ``nms_iou`` (OWL predicts overlapping boxes for one object from neighbouring
   patches: without it, counts would count patches).
3. All labels together, the ``max_detections`` best are kept, highest score first (ties: label,
   then box position), boxes mapped from fractions of the padded square to image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Queries:
    """Text queries and the label each belongs to (labels in registry order)."""

    labels: list[str]
    texts: list[str]
    label_of: list[int]  # for each text, the index of its label


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` xyxy box with ``(N, 4)`` boxes."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, limit: int = 0) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first (ties: lower index). With
    ``limit``, stop after that many are kept: a box's fate depends only on better boxes, so
    the first ``limit`` kept are exactly those of the full suppression."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    while len(order) and (limit <= 0 or len(keep) < limit):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= threshold]
    return keep


def detections(
    boxes: np.ndarray,
    logits: np.ndarray,
    queries: Queries,
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
    to_pixels: float,
    width: int,
    height: int,
) -> list[dict[str, Any]]:
    """Kept detections of one image (see the module docstring); ``to_pixels`` turns a fraction
    of the padded square into original image pixels."""
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # (P, Q)
    found: list[tuple[float, int, int, int]] = []  # score, label, query, patch
    for li in range(len(queries.labels)):
        cols = [q for q, lab in enumerate(queries.label_of) if lab == li]
        if not cols:
            continue
        sub = scores[:, cols]
        best = sub.argmax(axis=1)
        label_scores = sub[np.arange(len(sub)), best]
        cand = np.flatnonzero(label_scores >= score_threshold)
        for k in nms(boxes[cand], label_scores[cand], nms_iou, max_detections):
            p = int(cand[k])
            found.append((float(label_scores[p]), li, cols[int(best[p])], p))
    found.sort(key=lambda f: (-f[0], f[1], f[3]))
    out = []
    for score, li, qi, p in found[:max_detections]:
        x0, y0, x1, y1 = (boxes[p] * to_pixels).tolist()
        out.append(
            {
                "label": queries.labels[li],
                "query": queries.texts[qi],
                "score": score,
                "x0": min(max(x0, 0.0), width),
                "y0": min(max(y0, 0.0), height),
                "x1": min(max(x1, 0.0), width),
                "y1": min(max(y1, 0.0), height),
            }
        )
    return out
