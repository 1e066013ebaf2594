"""Criterion 3, language: do new captions still introduce new axes?

Measured between the latest snapshot and the newest earlier one with another set of captions
("before and after the latest captions"):

* **Principal angles** (Björck & Golub 1973) between the top-``pca_k`` PCA subspaces of the
  caption embeddings (a seeded sample of at most ``caption_sample``; the basis is stored in the
  snapshot): the cosines of the angles are the singular values of ``A Bᵀ`` for orthonormal
  bases ``A``, ``B``. Headline value: the largest angle, degrees; met at <= ``max_angle_deg``.
* **Distinctive vocabulary growth**: words (lower-case letters, 3+ characters, not a stop
  word) found in at least ``vocab_min_df`` captions; new such words per 100 new captions, at
  most ``max_vocab_growth``.
* **Vendi score** (Friedman & Dieng 2023): ``exp(-sum λ log λ)`` over the eigenvalues of
  ``K / n``, ``K`` the cosine similarity matrix of the caption embeddings (the effective number
  of modes; computed from the ``d x d`` matrix ``Xᵀ X / n``, which has the same non-zero
  eigenvalues); its relative change at most ``max_vendi_change``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from exokiratory.passes.stop.base import (
    INSUFFICIENT,
    LANGUAGE_STEPS,
    MET,
    NOT_MET,
    Criterion,
    StopParams,
    first_pending,
    fmt,
)
from exokiratory.passes.stop.history import History, SnapshotInfo

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

TITLE = "captions stop introducing new axes"
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
STOPWORDS = frozenset(
    [
        "the",
        "and",
        "with",
        "for",
        "are",
        "was",
        "were",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "has",
        "have",
        "had",
        "not",
        "but",
        "its",
        "it's",
        "his",
        "her",
        "him",
        "she",
        "they",
        "them",
        "then",
        "than",
        "who",
        "whom",
        "which",
        "what",
        "when",
        "where",
        "while",
        "some",
        "any",
        "all",
        "one",
        "two",
        "three",
        "four",
        "five",
        "very",
        "more",
        "most",
        "other",
        "such",
        "only",
        "own",
        "same",
        "can",
        "will",
        "just",
        "also",
        "about",
        "above",
        "below",
        "between",
        "both",
        "each",
        "few",
        "being",
        "been",
        "does",
        "did",
        "doing",
        "image",
        "photo",
        "picture",
        "shows",
        "showing",
        "shown",
        "view",
    ]
)


# -- pure measures -----------------------------------------------------------------------------
def words(text: str) -> set[str]:
    return {w.strip("'-") for w in _WORD.findall(text.lower())} - STOPWORDS - {""}


def distinctive_vocab(texts: Iterable[str], min_df: int) -> dict[str, int]:
    """word -> number of captions holding it, for words in at least ``min_df`` captions."""
    df: Counter[str] = Counter()
    for t in texts:
        df.update(words(t))
    return {w: n for w, n in df.items() if n >= min_df}


def pca_basis(x: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` principal axes of the rows of ``x`` (orthonormal rows, ``(k', d)``,
    ``k' = min(k, n - 1, d)``; signs fixed so the largest coordinate is positive)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    vals, vecs = np.linalg.eigh(centred.T @ centred)
    k = max(0, min(k, len(x) - 1, x.shape[1]))
    top = vecs[:, np.argsort(vals)[::-1][:k]].T
    signs = np.sign(top[np.arange(len(top)), np.abs(top).argmax(axis=1)])
    return top * np.where(signs == 0, 1.0, signs)[:, None]


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the spans of the orthonormal rows of ``a``
    and ``b``."""
    qa, _ = np.linalg.qr(np.asarray(a, np.float64).T)
    qb, _ = np.linalg.qr(np.asarray(b, np.float64).T)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def vendi_score(x: np.ndarray) -> float:
    """Vendi score of the rows of ``x`` under cosine similarity."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    lam = np.linalg.eigvalsh(x.T @ x / len(x))
    lam = lam[lam > 1e-12]
    lam = lam / lam.sum()
    return float(np.exp(-(lam * np.log(lam)).sum()))


# -- snapshot time -----------------------------------------------------------------------------
TEXT_SQL = "SELECT caption_id, text FROM captions WHERE error IS NULL AND text IS NOT NULL"
EMB_SQL = """SELECT embedding FROM caption_embeddings
WHERE error IS NULL AND embedding IS NOT NULL ORDER BY md5(caption_id || ?) LIMIT {limit}"""


def caption_rows(cat: Catalog, p: StopParams) -> tuple[list[pa.Table], dict[str, Any]]:
    """Snapshot rows ``caption``, ``vocab``, ``caption_basis`` and the language measures."""
    if "captions" not in cat.views:
        return [], {}
    t = cat.query(TEXT_SQL)
    if t.num_rows == 0:
        return [], {}
    vocab = distinctive_vocab(t.column("text").to_pylist(), p.vocab_min_df)
    n = t.num_rows
    rows = [
        pa.table({"signal": ["caption"] * n, "key": t.column("caption_id")}),
        pa.table(
            {
                "signal": ["vocab"] * len(vocab),
                "key": sorted(vocab),
                "value": pa.array([vocab[w] for w in sorted(vocab)], pa.int64()),
            }
        ),
    ]
    metrics: dict[str, Any] = {"n_captions": n, "vocab": len(vocab)}
    if "caption_embeddings" in cat.views:
        from exokiratory.search.indices import embedding_matrix

        e = cat.query(EMB_SQL.format(limit=int(p.caption_sample)), [str(p.seed)])
        if e.num_rows >= 2:
            x = embedding_matrix(e.column("embedding"))
            basis = pca_basis(x, p.pca_k).astype(np.float32)
            rows.append(
                pa.table(
                    {
                        "signal": ["caption_basis"] * len(basis),
                        "key": [f"{i:03d}" for i in range(len(basis))],
                        "value": pa.array(range(len(basis)), pa.int64()),
                        "vector": pa.array(
                            [list(map(float, v)) for v in basis], pa.list_(pa.float32())
                        ),
                    }
                )
            )
            metrics.update(vendi=vendi_score(x), n_embedded=e.num_rows)
    return rows, {"language": metrics}


# -- the criterion -----------------------------------------------------------------------------
def before_captions(history: History, latest: SnapshotInfo) -> SnapshotInfo | None:
    """The newest snapshot before ``latest`` with another set of captions."""
    now = latest.signals.get("caption", {}).get("digest")
    for s in reversed(history.snapshots):
        if s.seq < latest.seq and s.signals.get("caption", {}).get("digest") != now:
            return s
    return None


def _basis(history: History, info: SnapshotInfo) -> np.ndarray | None:
    t = history.signal(info, "caption_basis")
    if t.num_rows == 0:
        return None
    vec = t.column("vector").combine_chunks()
    return np.asarray(vec.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(
        t.num_rows, -1
    )


def measures(history: History, before: SnapshotInfo, after: SnapshotInfo) -> dict[str, Any]:
    """Principal angles, vocabulary growth and Vendi change between two snapshots."""
    out: dict[str, Any] = {}
    a, b = _basis(history, before), _basis(history, after)
    if a is not None and b is not None and a.shape[1] == b.shape[1]:
        k = min(len(a), len(b))
        angles = principal_angles(a[:k], b[:k])
        out.update(max_angle_deg=float(angles.max()), angles_deg=[float(x) for x in angles])
    new_caps = len(history.keys(after, "caption") - history.keys(before, "caption"))
    new_words = len(history.keys(after, "vocab") - history.keys(before, "vocab"))
    out.update(new_captions=new_caps, new_words=new_words)
    if new_caps:
        out["vocab_growth_per_100"] = 100.0 * new_words / new_caps
    v0 = before.metrics.get("language", {}).get("vendi")
    v1 = after.metrics.get("language", {}).get("vendi")
    if v0 and v1:
        out.update(vendi_before=v0, vendi=v1, vendi_change=abs(v1 - v0) / v0)
    return out


def evaluate(history: History, p: StopParams, pending: Sequence[str] = ()) -> Criterion:
    """Criterion 3 (see the module docstring)."""
    rule = (
        f"largest principal angle <= {p.max_angle_deg} deg, <= {p.max_vocab_growth} new "
        f"distinctive words per 100 captions, Vendi change <= {p.max_vendi_change:.0%}"
    )
    crit = Criterion("language", TITLE, None, p.max_angle_deg, rule, INSUFFICIENT, "")
    latest = history.latest
    crit.run = first_pending(pending, LANGUAGE_STEPS)
    if latest is None or "caption" not in latest.signals:
        crit.run = crit.run or "caption-factual"
        crit.why = f"no captions yet: run {crit.run}"
        return crit
    if "caption_basis" not in latest.signals:
        crit.run = crit.run or "caption-embed"
        crit.why = f"captions are not embedded yet: run {crit.run}"
        return crit
    before = before_captions(history, latest)
    if before is None or "caption_basis" not in before.signals:
        crit.run = crit.run or "caption-factual"
        crit.why = (
            "no earlier set of embedded captions to compare with: raise the caption budget, "
            f"run {crit.run} and caption-embed, then measure again"
        )
        return crit
    m = measures(history, before, latest)
    crit.values = {**m, "compared_with": before.name}
    crit.value = m.get("max_angle_deg")
    _judge(crit, history, before, m, p)
    return crit


def _judge(
    crit: Criterion, history: History, before: SnapshotInfo, m: dict[str, Any], p: StopParams
) -> None:
    fails = []
    if m.get("max_angle_deg") is not None and m["max_angle_deg"] > p.max_angle_deg:
        fails.append(f"largest principal angle {fmt(m['max_angle_deg'], 1)} deg")
    if m.get("vocab_growth_per_100") is not None and m["vocab_growth_per_100"] > p.max_vocab_growth:
        fails.append(f"{fmt(m['vocab_growth_per_100'], 1)} new words per 100 captions")
    if m.get("vendi_change") is not None and m["vendi_change"] > p.max_vendi_change:
        fails.append(f"Vendi score {fmt(m['vendi_before'], 2)} -> {fmt(m['vendi'], 2)}")
    crit.evidence = {
        f"captions, {before.name} -> latest": [{k: v for k, v in m.items() if k != "angles_deg"}]
    }
    if not fails:
        crit.state, crit.run = MET, None
        crit.why = (
            f"{m['new_captions']} new captions added no new axis "
            f"(largest angle {fmt(m.get('max_angle_deg'), 1)} deg)"
        )
        return
    crit.state = NOT_MET
    crit.run = history.changed_by(before, "caption", LANGUAGE_STEPS) or "caption-factual"
    crit.why = "new captions still add axes: " + "; ".join(fails) + f" (after {crit.run})"
