"""Criterion 2, segments across spaces: have the segment clusters settled across CLIP and DINO?

* **Motif agreement**: AMI between the CLIP and the DINO motif ids (``motif:clip``,
  ``motif:dino``) of the segments clustered in both spaces.
* **Mutual k-NN alignment** (Huh et al. 2024, "The Platonic Representation Hypothesis"): on a
  fixed, seeded sample of ``mknn_sample`` segments embedded in both spaces (the score drifts with
  n, so n is fixed and stored; fewer segments than that: all of them, and the value is not
  compared with one of another n), the mean over segments of ``|N_clip(i) & N_dino(i)| / k``
  where ``N(i)`` are the ``mknn_k`` nearest other segments by cosine. Computed at snapshot time.

Headline value: the largest change of either measure between the baseline and the latest
snapshot; met when the AMI changed by at most ``stable_ami_change`` and the alignment by at most
``stable_mknn_change``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exokiratory.passes.stop.base import (
    INSUFFICIENT,
    MET,
    NOT_MET,
    SEGMENT_STEPS,
    Criterion,
    StopParams,
    first_pending,
    fmt,
)
from exokiratory.passes.stop.history import History, SnapshotInfo

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

TITLE = "segment clusters stabilise across CLIP and DINO"
SPACES = ("clip", "dino")


# -- pure measures -----------------------------------------------------------------------------
def knn_sets(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest other rows of ``x`` by cosine (ties: lower index)."""
    from exokiratory.search.clustering import normalise_rows

    x = normalise_rows(x)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    return order[:, :k]


def mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean fraction of shared ``k`` nearest neighbours of each row in the two spaces."""
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError("mutual k-NN needs the same >= 2 items in both spaces")
    k = min(k, n - 1)
    na, nb = knn_sets(a, k), knn_sets(b, k)
    shared = [len(set(na[i]) & set(nb[i])) for i in range(n)]
    return float(np.mean(shared) / k)


SAMPLE_SQL = """
SELECT c.embedding AS a, d.embedding AS b
FROM segment_embeddings_clip c JOIN segment_embeddings_dino d USING (segment_id)
WHERE c.error IS NULL AND d.error IS NULL AND c.embedding IS NOT NULL
  AND d.embedding IS NOT NULL
ORDER BY md5(segment_id || ?), segment_id LIMIT {limit}
"""


def alignment(cat: Catalog, p: StopParams) -> dict[str, Any] | None:
    """Mutual k-NN alignment of the segment embeddings on the fixed sample (snapshot time)."""
    from exokiratory.search.indices import embedding_matrix

    views = {f"segment_embeddings_{s}" for s in SPACES}
    if not views <= set(cat.views):
        return None
    t = cat.query(SAMPLE_SQL.format(limit=int(p.mknn_sample)), [str(p.seed)])
    if t.num_rows < 3:
        return None
    a, b = embedding_matrix(t.column("a")), embedding_matrix(t.column("b"))
    return {"mknn": mutual_knn(a, b, p.mknn_k), "n": t.num_rows, "k": p.mknn_k}


def motif_agreement(history: History, info: SnapshotInfo) -> dict[str, Any] | None:
    if not {"motif:clip", "motif:dino"} <= set(info.signals):
        return None
    from exokiratory.passes.stop.topology import compare

    a, b = history.joined(info, info, "motif:clip", "motif:dino")
    if len(a) < 2:
        return None
    return compare(a, b)


# -- the criterion -----------------------------------------------------------------------------
def _missing_run(info: SnapshotInfo | None, pending: Sequence[str]) -> str:
    have = set(info.signals) if info is not None else set()
    pend = first_pending(pending, SEGMENT_STEPS)
    if pend is not None:
        return pend
    for space in SPACES:
        if f"motif:{space}" not in have:
            return f"segment-embed-{space}"
    return "motifs"


def evaluate(history: History, p: StopParams, pending: Sequence[str] = ()) -> Criterion:
    """Criterion 2 (see the module docstring)."""
    rule = (
        f"|change of motif AMI| <= {p.stable_ami_change} and "
        f"|change of mutual k-NN| <= {p.stable_mknn_change}"
    )
    crit = Criterion("segments", TITLE, None, p.stable_ami_change, rule, INSUFFICIENT, "")
    latest = history.latest
    now = motif_agreement(history, latest) if latest is not None else None
    if latest is None or now is None:
        crit.run = _missing_run(latest, pending)
        crit.why = f"no motifs in both CLIP and DINO yet: run {crit.run}"
        return crit
    crit.values = {"ami": now["ami"], "ari": now["ari"], "n_segments": now["n"]}
    mk = latest.metrics.get("segments_alignment")
    if mk:
        crit.values.update(mknn=mk["mknn"], mknn_n=mk["n"], mknn_k=mk["k"])
    base = history.baseline(latest)
    before = motif_agreement(history, base) if base is not None else None
    if base is None or before is None:
        crit.run = first_pending(pending, SEGMENT_STEPS) or SEGMENT_STEPS[0]
        crit.why = (
            "one measure of the motif agreement only: run "
            f"{crit.run} (more images), then measure again"
        )
        return crit
    _judge(crit, history, latest, base, before, p)
    return crit


def _mknn_change(
    crit: Criterion, now: dict[str, Any] | None, old: dict[str, Any] | None, p: StopParams
) -> float | None:
    """|change| of the mutual k-NN alignment, compared only at the fixed n."""
    if not now or not old:
        return None
    if now["n"] == old["n"] == p.mknn_sample:
        return float(abs(now["mknn"] - old["mknn"]))
    crit.notes.append(
        f"mutual k-NN not compared: n {old['n']} -> {now['n']} "
        f"(compared only at the fixed n = {p.mknn_sample})"
    )
    return None


def _judge(
    crit: Criterion,
    history: History,
    latest: SnapshotInfo,
    base: SnapshotInfo,
    before: dict[str, Any],
    p: StopParams,
) -> None:
    key = "ami" if crit.values["ami"] is not None and before["ami"] is not None else "ari"
    if key == "ari":
        crit.notes.append("AMI needs scikit-learn (pip install 'exokiratory[report]'): ARI used")
    d_ami = abs(float(crit.values[key]) - float(before[key]))
    now_mk, old_mk = (
        latest.metrics.get("segments_alignment"),
        base.metrics.get("segments_alignment"),
    )
    d_mk = _mknn_change(crit, now_mk, old_mk, p)
    crit.value = max(d_ami, d_mk or 0.0)
    crit.values.update(ami_before=before["ami"], ami_change=d_ami, mknn_change=d_mk)
    crit.values["compared_with"] = base.name
    crit.evidence = {
        "CLIP-vs-DINO motifs": [
            {"snapshot": base.name, "ami": before["ami"], "mknn": (old_mk or {}).get("mknn")},
            {
                "snapshot": latest.name,
                "ami": crit.values["ami"],
                "mknn": (now_mk or {}).get("mknn"),
            },
        ]
    }
    if d_ami <= p.stable_ami_change and (d_mk is None or d_mk <= p.stable_mknn_change):
        crit.state, crit.why = (
            MET,
            f"motif AMI changed by {fmt(d_ami)}"
            + (f", mutual k-NN by {fmt(d_mk)}" if d_mk is not None else ""),
        )
        return
    crit.state = NOT_MET
    crit.run = (
        history.changed_by(base, "motif:clip", SEGMENT_STEPS)
        or history.changed_by(base, "motif:dino", SEGMENT_STEPS)
        or "motifs"
    )
    crit.why = (
        f"CLIP-vs-DINO motifs still moving (AMI {fmt(before['ami'])} -> {fmt(crit.values['ami'])}"
        + (f", mutual k-NN change {fmt(d_mk)}" if d_mk is not None else "")
        + f") after {crit.run}"
    )
