"""Distinctive caption terms per cluster: class-based TF-IDF (c-TF-IDF, Grootendorst 2022).

Every caption of an image (image and segment captions) counts for the image's cluster. Terms
are lower-cased words of at least 3 letters (``[a-z][a-z0-9']+``) outside :data:`STOPWORDS`.
For term ``t`` and cluster ``c`` (a "class", all of its captions as one document):

``score(t, c) = tf(t, c) * ln(1 + A / f(t))``

with ``tf(t, c)`` the count of ``t`` in ``c`` divided by the number of terms in ``c``, ``f(t)``
the count of ``t`` over all clusters and ``A`` the average number of terms per cluster. Only
clusters with at least ``min_captions`` captions get terms (the others are too small to say
anything), only terms seen at least ``min_term_count`` times in the cluster, the
``top_terms`` best per cluster (ties: alphabetical).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOKEN = re.compile(r"[a-z][a-z0-9']+")

_STOPWORDS_TEXT = """a about above after again all also an and any are as at be been being below between both
    but by can could did do does doing down during each few for from further had has have having
    he her here hers him his how i if in into is it its itself just me more most my no nor not
    now of off on once only or other our out over own same she should so some such than that the
    their them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your image picture photo photograph
    shows showing there's it's"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def tokens(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if len(t) >= 3 and t not in STOPWORDS]


@dataclass(frozen=True)
class Term:
    cluster: int
    rank: int
    term: str
    count: int
    score: float


def class_tfidf(
    clusters: Sequence[int],
    texts: Sequence[str | list[str]],
    *,
    min_captions: int,
    min_term_count: int,
    top_terms: int,
) -> list[Term]:
    """The distinctive terms of each cluster with enough captions (see the module docstring);
    ``texts``: the captions, or their :func:`tokens` already."""
    per: dict[int, Counter[str]] = {}
    n_captions: Counter[int] = Counter()
    for c, text in zip(clusters, texts, strict=True):
        words = text if isinstance(text, list) else tokens(text or "")
        per.setdefault(int(c), Counter()).update(words)
        n_captions[int(c)] += 1
    if not per:
        return []
    total: Counter[str] = Counter()
    for counts in per.values():
        total.update(counts)
    avg = float(np.mean([sum(v.values()) for v in per.values()]))
    out: list[Term] = []
    for c in sorted(per):
        counts = per[c]
        size = sum(counts.values())
        if n_captions[c] < min_captions or size == 0:
            continue
        scored = [
            (count / size * float(np.log1p(avg / total[t])), t, count)
            for t, count in counts.items()
            if count >= min_term_count
        ]
        scored.sort(key=lambda x: (-x[0], x[1]))
        out += [
            Term(c, rank, t, count, score)
            for rank, (score, t, count) in enumerate(scored[:top_terms], start=1)
        ]
    return out
