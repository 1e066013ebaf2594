"""Motifs: known clusters recovered, infrastructure / foreground / rare scoring on crafted data,
robust outliers, the ``motifs`` derivation's two tables, and segment search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("faiss")

from sklearn.metrics import adjusted_rand_score, homogeneity_score

from exokiratory import Workspace
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.motifs.scores import (
    MotifsParams,
    SegmentSet,
    find_motifs,
    group_median,
    robust_outlier_scores,
    score_motifs,
)
from exokiratory.search.clustering import KMeansResult
from exokiratory.search.indices import segment_int_id

from .segment_data import install_segments, write_scenes

DIM = 24


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _crafted(seed: int = 0) -> tuple[SegmentSet, np.ndarray]:
    """Three motifs: "sky" (one large border segment in each of 60 images), "cup" (one small
    inner segment in each of the same 60 images) and "logo" (12 small segments from 2 images)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(3, DIM)))
    groups = [(0, np.arange(60), 0.45, True), (1, np.arange(60), 0.03, False)]
    groups.append((2, np.repeat([7, 8], 6), 0.02, False))
    labels, images, areas, borders, masks = [], [], [], [], []
    for label, imgs, area, border in groups:
        labels += [label] * len(imgs)
        images += imgs.tolist()
        areas += [area] * len(imgs)
        borders += [border] * len(imgs)
        masks += [label * 10 + i % 6 for i in range(len(imgs))]
    lab = np.asarray(labels)
    vectors = _unit(centres[lab] + 0.1 * rng.normal(size=(len(lab), DIM)))
    idx = np.asarray(images, np.int64)
    seg = SegmentSet(
        vectors=vectors,
        segment_ids=[f"img{i:03d}-{m:04d}" for i, m in zip(idx, masks, strict=True)],
        image_ids=[f"img{i:03d}" for i in idx],
        image_idx=idx,
        mask_index=np.asarray(masks, np.int32),
        area_fraction=np.asarray(areas, np.float32),
        touches_border=np.asarray(borders, bool),
    )
    return seg, lab


def test_known_motifs_are_recovered_and_scored() -> None:
    seg, labels = _crafted()
    params = MotifsParams(target_cluster_size=44)  # 132 segments -> k = 3
    per_seg, per_cluster = find_motifs(seg, "clip", params)
    assert adjusted_rand_score(labels, per_seg.column("cluster_id").to_numpy()) == 1.0
    clusters = {r["cluster_id"]: r for r in per_cluster.to_pylist()}
    assert [clusters[c]["size"] for c in range(3)] == [60, 60, 12]  # renumbered by size
    of_label = {
        int(lab): clusters[int(c)]
        for lab, c in zip(labels, per_seg.column("cluster_id").to_numpy(), strict=True)
    }
    sky, cup, logo = of_label[0], of_label[1], of_label[2]
    assert sky["is_infrastructure"] and not sky["is_rare_motif"] and not sky["is_foreground"]
    assert sky["infrastructure_score"] == pytest.approx(1.0)  # everywhere, large, border
    assert cup["is_foreground"] and not cup["is_infrastructure"]
    # recurs everywhere (0.4) but small (0.3 x 0.03 / 0.2) and never on the border
    assert cup["infrastructure_score"] == pytest.approx(0.4 + 0.3 * 0.15, abs=1e-4)
    assert logo["is_rare_motif"] and logo["n_images"] == 2 and not logo["is_foreground"]
    assert sky["n_images"] == 60 and sky["image_fraction"] == pytest.approx(1.0)
    assert sky["mean_area_fraction"] == pytest.approx(0.45)
    assert sky["mean_touches_border"] == 1.0 and cup["mean_touches_border"] == 0.0
    for c in clusters.values():
        ids = c["exemplar_segment_ids"]
        members = set(
            per_seg.filter(pa.compute.equal(per_seg["cluster_id"], c["cluster_id"]))
            .column("segment_id")
            .to_pylist()
        )
        assert len(ids) == 5 and set(ids) <= members
    rows = per_seg.to_pylist()
    assert sum(r["is_exemplar"] for r in rows) == 15
    # over-clustered (k = 7, the usual regime): motifs split, but no cluster mixes two
    fine, _ = find_motifs(seg, "clip", MotifsParams(target_cluster_size=20))
    assert homogeneity_score(labels, fine.column("cluster_id").to_numpy()) == pytest.approx(1.0)
    assert all(r["is_infrastructure"] == (r["cluster_id"] == sky["cluster_id"]) for r in rows)


def test_scoring_on_a_given_clustering() -> None:
    """The scores follow the documented formula whatever k-means found."""
    seg, labels = _crafted(seed=1)
    centroids = np.stack([_unit(seg.vectors[labels == c].mean(axis=0)) for c in range(3)])
    sim = np.einsum("nd,nd->n", seg.vectors, centroids[labels]).astype(np.float32)
    fit = KMeansResult(labels.astype(np.int32), centroids, sim)
    params = MotifsParams(
        recurrence_ref=0.5,
        area_ref=0.5,
        infrastructure_threshold=0.9,
        rare_max_images=1,
        rare_relative_size=0.3,
    )
    _, per_cluster = score_motifs(seg, "dino", params, fit)
    rows = per_cluster.to_pylist()
    # sky: recurrence 1, area 0.45/0.5, border 1 -> 0.4 + 0.27 + 0.3 = 0.97
    assert rows[0]["infrastructure_score"] == pytest.approx(0.97, abs=1e-5)
    assert rows[0]["is_infrastructure"]
    # logo: 2 of 60 images -> recurrence (2/60)/0.5; area 0.02/0.5; no border
    want = 0.4 * (2 / 60) / 0.5 + 0.3 * 0.02 / 0.5
    assert rows[2]["infrastructure_score"] == pytest.approx(want, abs=1e-5)
    # rare: 12 segments < 0.3 x 50 (it is in 2 images, more than rare_max_images)
    assert not rows[1]["is_rare_motif"] and rows[2]["is_rare_motif"]
    assert {r["space"] for r in rows} == {"dino"}


def test_robust_outlier_scores_flag_the_far_member() -> None:
    rng = np.random.default_rng(3)
    distance = np.concatenate([0.1 + 0.01 * rng.normal(size=50), [0.4], 0.3 + 0.02 * rng.random(3)])
    assign = np.concatenate([np.zeros(51, np.int32), np.ones(3, np.int32)])
    z = robust_outlier_scores(distance, assign, 2, min_size=5)
    assert z[50] > 10 and (np.abs(z[:50]) < 4).all()
    # the 3-member cluster uses the median / MAD of everything: far from the bulk, but scaled
    assert (z[51:] > 3.5).all()
    seg, _ = _crafted()
    seg.vectors[5] = _unit(seg.vectors[5] + 0.9 * _unit(np.ones(DIM)))  # a stray sky segment
    per_seg, _ = find_motifs(seg, "clip", MotifsParams(target_cluster_size=44))
    flagged = [r["segment_id"] for r in per_seg.to_pylist() if r["is_outlier"]]
    assert seg.segment_ids[5] in flagged and len(flagged) <= 3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.floats(-10, 10)), min_size=1, max_size=60),
)
def test_group_median_matches_numpy(pairs: list[tuple[int, float]]) -> None:
    groups = np.asarray([g for g, _ in pairs], np.int64)
    values = np.asarray([v for _, v in pairs], np.float64)
    got = group_median(values, groups, 5)
    for g in range(5):
        if (groups == g).any():
            assert got[g] == pytest.approx(np.median(values[groups == g]))
        else:
            assert np.isnan(got[g])


def test_params_are_validated() -> None:
    from exokiratory.engine.registry import get_pass

    with pytest.raises(ValueError, match=r"passes\.motifs: spaces"):
        get_pass("motifs", {"spaces": ["clap"]})
    with pytest.raises(ValueError, match="weight"):
        get_pass("motifs", {"weight_recurrence": 0, "weight_area": 0, "weight_border": 0})


# -- through the workspace -----------------------------------------------------------------
def _install_embeddings(ws: Workspace, seed: int = 0) -> dict[str, int]:
    """Crafted segment embeddings (one direction per kind of segment, a little noise) stored
    as the segment-embed-clip pass's output; returns segment_id -> kind (0 sky, 1 ground, 2
    object)."""
    (p,) = ws.passes(["segment-embed-clip"])
    rows = ws.sql("SELECT segment_id, image_id, image_idx, mask_index FROM segments").to_pylist()
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(3, DIM)))
    kinds = np.asarray([r["mask_index"] for r in rows])
    vectors = _unit(centres[kinds] + 0.05 * rng.normal(size=(len(rows), DIM)))
    table = pa.table(
        {
            "segment_id": [r["segment_id"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
            "image_idx": [r["image_idx"] for r in rows],
            "mask_index": [r["mask_index"] for r in rows],
            "embedding": [v.tolist() for v in vectors],
            "model_id": ["crafted"] * len(rows),
            "revision": [None] * len(rows),
            "error": [None] * len(rows),
        }
    )
    schema = pa.schema(
        [
            f if f.name != "embedding" else f.with_type(pa.list_(pa.float32()))
            for f in p.output_schema()
        ]
    )  # type: ignore[union-attr]
    PartDataset(ws.storage, p.output_rel, p.key).write_part(  # type: ignore[union-attr]
        "part-000000000000-crafted", table.cast(schema)
    )
    return {r["segment_id"]: int(k) for r, k in zip(rows, kinds, strict=True)}


@pytest.fixture(scope="module")
def motif_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, int]]:
    root = tmp_path_factory.mktemp("motifs")
    scenes = write_scenes(root / "src", 40, seed=4)
    ws = Workspace.init(root / "ws", [str(root / "src")])
    ws.config.passes["motifs"] = {"spaces": ["clip"], "target_cluster_size": 40}
    ws.scan()
    install_segments(ws, scenes)
    return ws, _install_embeddings(ws)


def test_motifs_derivation_writes_both_tables(motif_ws: tuple[Workspace, dict[str, int]]) -> None:
    ws, kind_of = motif_ws
    (rep,) = ws.run(["motifs"])
    assert rep.rows == 120  # type: ignore[union-attr]
    per_seg = ws.table("motifs").to_pylist()
    clusters = {r["cluster_id"]: r for r in ws.table("motifs_clusters").to_pylist()}
    assert len(clusters) == 3 and {r["space"] for r in per_seg} == {"clip"}
    truth = [kind_of[r["segment_id"]] for r in per_seg]
    assert adjusted_rand_score(truth, [r["cluster_id"] for r in per_seg]) == 1.0
    kind_cluster = {kind_of[r["segment_id"]]: clusters[r["cluster_id"]] for r in per_seg}
    # sky and ground: in every image, large, on the border; the objects: small, inside
    assert kind_cluster[0]["is_infrastructure"] and kind_cluster[1]["is_infrastructure"]
    assert kind_cluster[2]["is_foreground"] and kind_cluster[2]["n_images"] == 40
    assert kind_cluster[2]["mean_area_fraction"] < 0.1
    assert ws.run(["motifs"])[0].up_to_date  # type: ignore[union-attr]
    status = {d.name: d for d in ws.status().derived}["motifs"]
    assert status.rows == 120 and status.summary["is_infrastructure"] == 80


def test_segment_search_returns_segments_with_their_parent_image(
    motif_ws: tuple[Workspace, dict[str, int]],
) -> None:
    ws, kind_of = motif_ws
    rep = ws.build_index("clip", segments=True)
    assert rep.total == 120
    query = next(s for s, k in kind_of.items() if k == 2)
    hits = ws.search(image=query, k=5, segments=True).to_dict("records")
    assert hits[0]["segment_id"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(kind_of[h["segment_id"]] == 2 for h in hits)  # other objects, not sky
    parents = {
        r["image_id"]: r["first_path"]
        for r in ws.sql("SELECT image_id, first_path FROM images").to_pylist()
    }
    for h in hits:
        assert h["segment_id"].startswith(h["image_id"])
        assert h["path"] == parents[h["image_id"]]
        assert len(h["bbox"]) == 4 and h["bbox"][2] <= 25  # the object's box, not the sky's
    ids = ws.storage.read_parquet("indices/segments-clip.ids.parquet").to_pylist()
    assert all(
        r["id"] == segment_int_id([r["image_idx"]], [int(r["segment_id"][-4:])])[0] for r in ids
    )
    # an incremental rebuild adds nothing; the image index is untouched
    assert ws.build_index("clip", segments=True).added == 0
    assert not ws.storage.exists("indices/clip.faiss")


def test_segment_search_cli_json(motif_ws: tuple[Workspace, dict[str, int]]) -> None:
    import json

    from typer.testing import CliRunner

    from exokiratory.api.cli import app

    ws, kind_of = motif_ws
    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", "--segments", "-w", ws.storage.url])
    assert res.exit_code == 0, res.output
    query = next(s for s, k in kind_of.items() if k == 0)
    res = runner.invoke(
        app,
        ["search", "--segments", "--image", query, "-k", "3", "-f", "json", "-w", ws.storage.url],
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["segment_id"] == query
    assert {"segment_id", "image_id", "path", "score", "bbox"} <= set(hits[0])


def test_motifs_without_segment_embeddings_are_empty(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    (rep,) = ws.run(["motifs"])
    assert rep.rows == 0  # type: ignore[union-attr]
    assert ws.table("motifs_clusters").num_rows == 0
