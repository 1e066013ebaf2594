"""The stop condition (``exokiratory stop``): each criterion against hand-computed values,
planted histories (stable -> stop; a pass moving cluster boundaries -> continue naming it; too
little history -> insufficient data naming the pass to run), kill safety of the history, and
the command on a real workspace."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from exokiratory import Workspace
from exokiratory.core.storage import Storage
from exokiratory.passes.stop import language, outliers, segments, topology
from exokiratory.passes.stop.base import INSUFFICIENT, MET, NOT_MET, StopParams, stop_params
from exokiratory.passes.stop.history import HISTORY, History, list_snapshots, write_snapshot
from exokiratory.passes.stop.snapshot import bootstrap_levels, conform
from exokiratory.passes.stop.verdict import evaluate

P = StopParams()


# -- each criterion's measures, by hand ---------------------------------------------------------
def test_ari_hand_computed() -> None:
    # contingency [[2, 1], [0, 3]]: sum C(n_ij, 2) = 4, rows 6, columns 7, C(6, 2) = 15
    # ARI = (4 - 6*7/15) / ((6 + 7)/2 - 6*7/15) = 1.2 / 3.7
    got = topology.compare(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1]))
    assert got["ari"] == pytest.approx(1.2 / 3.7)
    assert got["n"] == 6 and got["ami"] is not None
    # contingency [[2, 0], [1, 1]]: index 1 = expected 1: ARI 0
    assert topology.compare(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))["ari"] == 0.0


def test_ami_skipped_on_huge_contingency() -> None:
    n = int(topology.AMI_MAX_CELLS**0.5) + 2
    a = np.arange(n)
    got = topology.compare(a, a)
    assert got["ami"] is None and got["ari"] == pytest.approx(1.0)


def test_best_jaccard_hand_computed() -> None:
    # old 0 = {0,1}: new 0 = {0} -> 1/2, new 1 = {1,2,3} -> 1/4; old 1 = {2,3}: new 1 -> 2/3
    got = topology.best_jaccard(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert got == {0: pytest.approx(0.5), 1: pytest.approx(2 / 3)}


def test_bootstrap_stability_separated_vs_noise() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3] * 10
    x = np.concatenate([c + rng.normal(0, 0.3, (40, 8)) for c in centres]).astype(np.float32)
    labels = np.repeat([0, 1, 2], 40)
    stab = topology.bootstrap_stability(x, labels, resamples=5, seed=0, niter=10)
    assert stab == {0: pytest.approx(1.0), 1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    noise = rng.normal(0, 1, (120, 8)).astype(np.float32)
    shaky = topology.bootstrap_stability(
        noise, rng.integers(0, 3, 120), resamples=5, seed=0, niter=10
    )
    assert max(shaky.values()) < P.bootstrap_stable  # random labels: not valid clusters


def test_bootstrap_levels() -> None:
    # 10^5 images at the default cluster sizes: only the coarsest level (52 clusters) is cheap
    # and populated enough in a 1000-image sample; small hierarchies: every level up to 32
    assert bootstrap_levels([(0, 3334), (1, 417), (2, 52)], P) == [2]
    assert bootstrap_levels([(0, 20), (1, 3), (2, 1)], P) == [0, 1]
    assert bootstrap_levels([(0, 500)], P) == []


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_mutual_knn_hand_computed() -> None:
    # nearest neighbours by angle; a: 0,10,30,70 -> 1,0,1,2; b: 0,50,60,90 -> 1,2,1,2
    a = np.array([_unit(d) for d in (0, 10, 30, 70)])
    b = np.array([_unit(d) for d in (0, 50, 60, 90)])
    assert segments.mutual_knn(a, b, 1) == pytest.approx(0.75)
    assert segments.mutual_knn(a, a, 2) == pytest.approx(1.0)


def test_vendi_and_principal_angles_hand_computed() -> None:
    assert language.vendi_score(np.eye(3)) == pytest.approx(3.0)
    assert language.vendi_score(np.ones((4, 5))) == pytest.approx(1.0)
    # two unit vectors with cosine 0.5: eigenvalues of K/2 are 0.75 and 0.25
    two = np.array([_unit(0), _unit(60)])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert language.vendi_score(two) == pytest.approx(math.exp(h))
    e = np.eye(3)
    tilted = np.array([e[0], (e[1] + e[2]) / math.sqrt(2)])
    assert language.principal_angles(e[:2], tilted) == pytest.approx([0.0, 45.0])


def test_distinctive_vocabulary_and_pca_basis() -> None:
    texts = ["a red car on the road", "red car parked", "blue sky", "The photo shows a red kite"]
    assert language.distinctive_vocab(texts, 2) == {"red": 3, "car": 2}
    x = np.array([[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 1.0, 1.0], [4.0, 1.0, 1.0]])
    basis = language.pca_basis(x, 1)
    assert basis.shape == (1, 3) and basis[0] == pytest.approx([1.0, 0.0, 0.0])


def test_outlier_measures_hand_computed() -> None:
    assert outliers.jaccard({"a", "b", "c"}, {"b", "c", "d"}) == pytest.approx(0.5)
    assert outliers.jaccard(set(), set()) is None
    assert outliers.n_top(18, 0.02) == 1 and outliers.n_top(1000, 0.02) == 20


def test_thresholds_from_config_with_clear_errors() -> None:
    assert stop_params({"stable_ari": 0.8}).stable_ari == 0.8
    with pytest.raises(ValueError, match=r"passes\.stop\.stable_aria"):
        stop_params({"stable_aria": 0.8})
    with pytest.raises(ValueError, match=r"passes\.stop\.stable_ari"):
        stop_params({"stable_ari": 2})


# -- planted histories --------------------------------------------------------------------------
IMAGES = [f"img{i:02d}" for i in range(12)]
SEGS = [f"img{i:02d}-{m:04d}" for i in range(12) for m in range(2)]
BASIS = np.eye(6, dtype=np.float32)[:3]


def _rows(signal: str, mapping: dict[str, int], scores: dict[str, float] | None = None) -> pa.Table:
    keys = sorted(mapping)
    cols: dict[str, Any] = {
        "signal": [signal] * len(keys),
        "key": keys,
        "value": pa.array([mapping[k] for k in keys], pa.int64()),
    }
    if scores is not None:
        cols["score"] = pa.array([scores[k] for k in keys], pa.float64())
    return pa.table(cols)


def _structure(
    *,
    dino_shift: int = 0,
    captions: int = 0,
    words: tuple[str, ...] = ("red", "car"),
    basis: np.ndarray = BASIS,
    vendi: float = 5.0,
) -> tuple[pa.Table, dict[str, Any]]:
    """A snapshot: 3 clusters of 4 images in both spaces (DINO's boundaries moved by
    ``dino_shift`` images), motifs, stable bootstrap, two outlier sets and ``captions``."""
    clip = {k: i // 4 for i, k in enumerate(IMAGES)}
    dino = {k: ((i + dino_shift) % 12) // 4 for i, k in enumerate(IMAGES)}
    motif = {k: i % 3 for i, k in enumerate(SEGS)}
    parts = [
        _rows("cluster:clip:0", clip),
        _rows("cluster:dino:0", dino),
        _rows("stability:clip:0", {"0": 4, "1": 4, "2": 4}, {"0": 0.9, "1": 0.88, "2": 0.95}),
        _rows("motif:clip", motif),
        _rows("motif:dino", motif),
        _rows("outlier:features", {"img00": 1, "img05": 2}),
        _rows("outlier:clip", {"img05": 1, "img07": 2}),
    ]
    metrics: dict[str, Any] = {"segments_alignment": {"mknn": 0.4, "n": P.mknn_sample, "k": 10}}
    if captions:
        parts += [
            _rows("caption", {f"cap{i:03d}": 0 for i in range(captions)}),
            _rows("vocab", {w: 2 for w in words}),
            pa.table(
                {
                    "signal": ["caption_basis"] * len(basis),
                    "key": [f"{i:03d}" for i in range(len(basis))],
                    "vector": pa.array(basis.tolist(), pa.list_(pa.float32())),
                }
            ),
        ]
        metrics["language"] = {"n_captions": captions, "vocab": len(words), "vendi": vendi}
    return conform(parts), metrics


def _record(
    storage: Storage,
    run: str,
    trigger: str,
    snap: tuple[pa.Table, dict[str, Any]],
    wrote: tuple[str, ...] = (),
) -> None:
    table, metrics = snap
    write_snapshot(
        storage,
        table,
        metrics,
        params_digest=P.snapshot_digest(),
        trigger=trigger,
        run_id=run,
        wrote=wrote,
    )


def _result(storage: Storage, pending: tuple[str, ...] = ()) -> dict[str, Any]:
    out = evaluate(History(storage, P.snapshot_digest()), P, pending).to_dict()
    json.dumps(out)  # JSON-safe
    return out


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["criteria"]}


def test_stable_structure_across_two_runs_says_stop(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    _record(storage, "run1", "caption-embed", _structure(captions=100))
    # the second run: 100 more captions, no new distinctive word, a basis rotated by 5 degrees
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    rotated = BASIS.copy()
    rotated[0] = [c, 0, 0, s, 0, 0]
    _record(storage, "run2", "caption-embed", _structure(captions=200, basis=rotated, vendi=5.1))
    result = _result(storage)
    crit = _by_name(result)
    assert [c["name"] for c in result["criteria"]] == [
        "topology",
        "segments",
        "language",
        "outliers",
    ]
    assert {c["state"] for c in result["criteria"]} == {MET}, result
    assert crit["topology"]["value"] == pytest.approx(1.0)
    assert crit["segments"]["value"] == pytest.approx(0.0)
    assert crit["language"]["value"] == pytest.approx(5.0)  # the largest principal angle
    assert crit["language"]["values"]["vocab_growth_per_100"] == pytest.approx(0.0)
    assert crit["language"]["values"]["vendi_change"] == pytest.approx(0.02)
    assert crit["outliers"]["value"] == pytest.approx(1.0)
    assert result["verdict"]["decision"] == "stop" and result["verdict"]["run"] is None


def test_a_pass_moving_cluster_boundaries_is_named(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    _record(storage, "run1", "clusters-dino", _structure())
    _record(storage, "run2", "flags", _structure())  # same structure: not recorded twice
    assert len(list_snapshots(storage)) == 1
    # run 2: a new pass moves the DINO boundaries by two images per cluster
    _record(storage, "run2", "segment-embed-dino", _structure(dino_shift=2))
    result = _result(storage)
    topo = _by_name(result)["topology"]
    assert topo["state"] == NOT_MET and topo["run"] == "segment-embed-dino"
    change = topo["evidence"][f"change since {list_snapshots(storage)[0].name}"]
    dino = next(r for r in change if r["clustering"] == "cluster:dino:0")
    # each cluster keeps 2 of its 4 images: six cells of 2 -> sum C(2, 2) = 6; rows and
    # columns 3 C(4, 2) = 18; C(12, 2) = 66: ARI = (6 - 18*18/66) / (18 - 18*18/66) = 1/12
    assert dino["ari"] == pytest.approx(1 / 12, abs=1e-6) and topo["value"] == dino["ari"]
    assert result["verdict"] == {
        "decision": "continue",
        "run": "segment-embed-dino",
        "why": "topology: " + topo["why"],
        "criterion": "topology",
    }


def test_new_embeddings_are_named_before_the_clustering_they_moved(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    _record(storage, "run1", "clusters-dino", _structure())
    # run 2: sense and embed-dino wrote rows for new images, then clusters-dino re-derived
    moved = _structure(dino_shift=1)
    _record(storage, "run2", "clusters-dino", moved, wrote=("sense", "embed-dino"))
    topo = _by_name(_result(storage))["topology"]
    assert topo["state"] == NOT_MET and topo["run"] == "embed-dino"
    assert "after embed-dino" in topo["why"]


def test_too_little_history_names_the_pass_to_run(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    result = _result(storage)
    assert {c["state"] for c in result["criteria"]} == {INSUFFICIENT}
    assert [c["run"] for c in result["criteria"]] == [
        "clusters-clip",
        "segment-embed-clip",
        "caption-factual",
        "flags",
    ]
    assert result["verdict"]["decision"] == "continue"
    assert result["verdict"]["run"] == "clusters-clip"
    table, metrics = _structure(captions=10)
    _record(storage, "run1", "clusters-clip", (table, metrics))
    crit = _by_name(_result(storage))
    assert all(c["state"] == INSUFFICIENT for c in crit.values())
    assert crit["topology"]["run"] == "embed-clip" and crit["topology"]["value"] is None
    assert crit["language"]["run"] == "caption-factual"
    assert "no earlier set of embedded captions" in crit["language"]["why"]
    # a pass with units left is the one to run
    pending = _by_name(_result(storage, ("embed-dino", "caption-dense")))
    assert pending["topology"]["run"] == "embed-dino"
    assert pending["language"]["run"] == "caption-dense"


def test_new_captions_with_new_axes_are_not_met(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    _record(storage, "run1", "caption-embed", _structure(captions=100))
    other = np.eye(6, dtype=np.float32)[3:]  # an orthogonal subspace: every angle 90 degrees
    words = ("red", "car", "kite", "boat", "tree")
    _record(storage, "run2", "caption-factual", _structure(captions=150, words=words, basis=other))
    lang = _by_name(_result(storage))["language"]
    assert lang["state"] == NOT_MET and lang["run"] == "caption-factual"
    assert lang["value"] == pytest.approx(90.0)
    assert lang["values"]["vocab_growth_per_100"] == pytest.approx(100 * 3 / 50)


class _Catalog:
    """The part of the workspace catalog a snapshot reads, over in-memory tables."""

    def __init__(self, tables: dict[str, pa.Table], storage: Storage | None = None):
        import duckdb

        self.con = duckdb.connect()
        for name, t in tables.items():
            self.con.register(name, t)
        self.views = list(tables)
        self.storage = storage  # no embedding parts in it: vectors are read through the view

    def query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        from exokiratory.core.dataset import fetch_arrow

        return fetch_arrow(self.con.execute(sql, params or []))

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        return self.rows(sql, params)[0][0]


def _clustered(n: int = 60) -> dict[str, pa.Table]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    x = np.eye(8, dtype=np.float32)[labels] * 5 + rng.normal(0, 0.2, (n, 8)).astype(np.float32)
    ids = [f"img{i:03d}" for i in range(n)]
    return {
        "embeddings_clip": pa.table(
            {
                "image_id": ids,
                "image_idx": np.arange(n),
                "embedding": x.tolist(),
                "model_id": ["openai/clip-vit-base-patch32"] * n,
                "error": pa.nulls(n, pa.string()),
            }
        ),
        "clusters_clip": pa.table(
            {"image_id": ids, "level": [0] * n, "cluster_id": labels, "similarity": x[:, 0]}
        ),
    }


def test_snapshot_from_a_catalog_reuses_the_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exokiratory.passes.stop import snapshot

    storage = Storage(tmp_path)
    tables = _clustered()
    first = snapshot.record_snapshot(storage, _Catalog(tables, storage), P, trigger="clusters-clip")
    assert first is not None
    assert {"cluster:clip:0", "stability:clip:0", "outlier:clip"} <= set(first.signals)
    stab = History(storage, P.snapshot_digest()).signal(first, "stability:clip:0")
    assert stab.column("score").to_pylist() == [1.0, 1.0, 1.0]  # three separated clusters
    assert snapshot.record_snapshot(storage, _Catalog(tables, storage), P, trigger="flags") is None
    # a later pass that does not touch the clusters: the bootstrap is not run again
    monkeypatch.setattr(snapshot, "stability_rows", lambda cat, p: pytest.fail("recomputed"))
    flags = pa.table({"image_id": [f"img{i:03d}" for i in range(60)], "outlier_score": range(60)})
    second = snapshot.record_snapshot(
        storage, _Catalog({**tables, "flags": flags}, storage), P, trigger="flags"
    )
    assert second is not None and "outlier:features" in second.signals
    assert second.signals["stability:clip:0"] == first.signals["stability:clip:0"]


# -- kill safety of the history -----------------------------------------------------------------
def test_torn_writes_leave_the_history_readable(tmp_path: Path, caplog: Any) -> None:
    storage = Storage(tmp_path)
    _record(storage, "run1", "flags", _structure())
    folder = tmp_path / HISTORY
    (folder / ".tmp-0123-snap-000002-0123456789abcdef.parquet").write_bytes(b"PAR1 torn")
    (folder / "snap-000002-0123456789abcdef.parquet").write_bytes(b"PAR1\x00\x01 half a file")
    snaps = list_snapshots(storage)
    assert [s.seq for s in snaps] == [1]
    assert "unreadable structure snapshot" in caplog.text
    assert _by_name(_result(storage))["topology"]["state"] == INSUFFICIENT


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, pyarrow as pa
    from exokiratory.core.storage import Storage
    from exokiratory.passes.stop.base import StopParams
    from exokiratory.passes.stop.history import write_snapshot
    storage = Storage(sys.argv[1])
    for i in range(int(sys.argv[2]), 12):
        n = 100_000
        keys = [f"img{j:07d}" for j in range(n)]
        t = pa.table({"signal": ["cluster:clip:0"] * n, "key": keys,
                      "value": pa.array((np.arange(n) * (i + 1)) % 97, pa.int64())})
        t = t.append_column("score", pa.nulls(n, pa.float64()))
        t = t.append_column("vector", pa.nulls(n, pa.list_(pa.float32())))
        write_snapshot(storage, t, {}, params_digest=StopParams().snapshot_digest(),
                       trigger="clusters-clip", run_id="r")
    """
)


@pytest.mark.slow
def test_sigkill_while_writing_snapshots(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", WRITER, str(tmp_path), "0"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    folder = tmp_path / HISTORY
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob("snap-*"))) < 2:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later write
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    storage = Storage(tmp_path)
    snaps = list_snapshots(storage)
    assert len(snaps) >= 2 and [s.seq for s in snaps] == list(range(1, len(snaps) + 1))
    history = History(storage, P.snapshot_digest())
    for s in snaps:  # every committed snapshot reads whole
        assert history.signal(s, "cluster:clip:0").num_rows == 100_000
    # the rerun records the same state once: the last committed one is not recorded again
    last = len(snaps)
    subprocess.run([*cmd[:-1], str(last - 1)], check=True, timeout=120)
    again = list_snapshots(storage)
    assert len(again) == 12 and len({s.digest for s in again}) == 12


# -- a real workspace ---------------------------------------------------------------------------
@pytest.mark.slow
def test_run_records_snapshots_and_cli_prints_criteria(tmp_path: Path, photos: Path) -> None:
    from typer.testing import CliRunner

    from exokiratory.api.cli import app

    ws = Workspace.init(tmp_path / "ws", [str(photos)])
    ws.config.passes["flags"] = {"outlier_min_images": 3}  # a few photos get outlier scores
    ws.scan(progress=False)
    ws.run(["probe", "sense", "flags"], workers=1, progress=False)
    snaps = list_snapshots(ws.storage)
    assert [s.trigger for s in snaps] == ["flags"]
    assert "outlier:features" in snaps[0].signals
    ws.run(["flags"], workers=1, progress=False)  # up to date: no new snapshot
    assert len(list_snapshots(ws.storage)) == 1
    r = CliRunner().invoke(app, ["stop", "-w", ws.storage.url, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [c["name"] for c in out["criteria"]] == ["topology", "segments", "language", "outliers"]
    for c in out["criteria"]:
        assert {"name", "value", "threshold", "state", "evidence", "why"} <= set(c)
        assert c["state"] == INSUFFICIENT and c["run"]
    assert out["verdict"]["decision"] == "continue" and out["verdict"]["run"]
    assert out["params_version"] == "stop-v1" and out["params"]["stable_ari"] == 0.9
    assert len(list_snapshots(ws.storage)) == 1  # stop recorded nothing new
    plain = CliRunner().invoke(app, ["stop", "-w", ws.storage.url])
    assert plain.exit_code == 0 and "topology" in plain.output and "continue" in plain.output
    # thresholds come from the workspace config
    ws.config.passes["stop"] = {"stable_outlier_jaccard": 0.5}
    assert ws.stop().to_dict()["criteria"][3]["threshold"] == 0.5


def test_keys_are_hashed_in_batches_with_the_same_digest() -> None:
    import hashlib

    from exokiratory.core.hashing import update_joined

    for n in (0, 1, 3, 7):
        keys = pa.chunked_array([pa.array([f"img{i}" for i in range(n)], pa.string())])
        h = hashlib.sha256()
        update_joined(h, keys, "\n", batch=3)
        assert h.hexdigest() == hashlib.sha256("\n".join(keys.to_pylist()).encode()).hexdigest()
