"""PASS 7 synthesis: motif bags, the co-occurrence graph, and the comparisons with their
shuffled baselines, on a planted-structure workspace (``tests/synthesis_data.py``) and on small
crafted arrays; missing inputs say what to run; a rerun is a no-op and identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from sklearn.metrics import adjusted_rand_score

from exokiratory import Workspace
from exokiratory.passes.synthesis.agreement import (
    adjusted_rand,
    agreement_with_baseline,
    contingency,
    mapping,
)
from exokiratory.passes.synthesis.bags import SegmentMotifs, motif_bags, shares
from exokiratory.passes.synthesis.communities import find_communities, graphml
from exokiratory.passes.synthesis.cooccur import Incidence, cooccurrence, curveball_round
from exokiratory.passes.synthesis.step import graphml_paths
from exokiratory.passes.synthesis.terms import class_tfidf, tokens

from .synthesis_data import (
    FG_PER_TYPE,
    N_TYPES,
    PER_TYPE,
    TYPE_WORDS,
    dino_of,
    fg_motifs,
    planted_segments,
    planted_workspace,
)

SYNTHESIS_VIEWS = (
    "motif_bags",
    "motif_frequency",
    "motif_cooccurrence",
    "motif_communities",
    "caption_clusters",
    "structure_agreement",
    "structure_contingency",
    "structure_mapping",
    "caption_terms",
)


# -- pure parts ----------------------------------------------------------------------------
def test_bags_count_area_tfidf_and_shares() -> None:
    # image 0: motifs 0, 0, 1; image 1: motif 1; image 2: no segment
    seg = SegmentMotifs(
        image_row=np.array([0, 0, 0, 1]),
        motif=np.array([0, 0, 1, 1]),
        area=np.array([0.2, 0.3, 0.1, 0.5]),
        n_images=3,
        n_motifs=2,
    )
    b = motif_bags(seg)
    assert b.offsets.tolist() == [0, 2, 3, 3]
    assert b.motif.tolist() == [0, 1, 1] and b.count.tolist() == [2, 1, 1]
    assert b.area is not None and np.allclose(b.area, [0.5, 0.1, 0.5])
    assert b.df.tolist() == [1, 2]
    norms = np.bincount(b.pair_image, weights=b.tfidf**2, minlength=3)
    assert np.allclose(norms[:2], 1.0)
    infra = np.array([True, False])
    seg_share, area_share = shares(b, infra)
    assert np.allclose(seg_share[:2], [2 / 3, 0.0])
    assert area_share is not None and np.allclose(area_share[:2], [0.5 / 0.6, 0.0])


def test_curveball_keeps_both_margins_and_moves_motifs() -> None:
    rng = np.random.default_rng(0)
    inc = Incidence.from_pairs(rng.integers(0, 101, 900), rng.integers(0, 30, 900), 101, 30)
    image = inc.image
    for _ in range(10):
        image = curveball_round(inc, image, rng)
    assert np.array_equal(np.bincount(image, minlength=101), np.bincount(inc.image, minlength=101))
    assert len(np.unique(image * 30 + inc.motif)) == len(image)  # still a set per image
    assert (image != inc.image).mean() > 0.5


def test_cooccurrence_of_independent_motifs_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    n, k = 400, 12
    held = rng.random((n, k)) < 0.3  # independent motifs
    held[:, 0] = True  # one motif in every image: never significant with anything
    img, mot = np.nonzero(held)
    co = cooccurrence(
        Incidence.from_pairs(img, mot, n, k),
        min_motif_images=5,
        min_pair_images=3,
        n_shuffles=20,
        seed=0,
    )
    assert len(co.a) == k * (k - 1) // 2
    assert np.abs(co.z_score).max() < 3.5 and abs(float(co.z_score.mean())) < 0.5
    with_all = co.a == 0
    assert np.allclose(co.expected[with_all], co.count[with_all]) and np.all(co.pmi[with_all] == 0)


def test_agreement_baseline_is_near_zero_and_planted_agreement_is_far_above() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 5, 600)
    noisy = np.where(rng.random(600) < 0.1, rng.integers(0, 5, 600), truth)
    ag = agreement_with_baseline(truth, noisy, n_shuffles=10, seed=0, ami_max_clusters=50)
    assert ag.ari > 0.7 and ag.ami is not None and ag.ami > 0.6
    assert abs(ag.ari_baseline) < 0.01 and ag.ami_baseline is not None
    assert abs(ag.ami_baseline) < 0.01
    assert (ag.ari - ag.ari_baseline) / ag.ari_baseline_std > 50
    assert adjusted_rand(truth, noisy) == pytest.approx(adjusted_rand_score(truth, noisy))
    independent = agreement_with_baseline(
        truth, rng.integers(0, 5, 600), n_shuffles=10, seed=0, ami_max_clusters=2
    )
    assert abs(independent.ari) < 0.03 and independent.ami is None  # AMI above its cap


def test_mapping_finds_merges_and_splits() -> None:
    # left 0 -> right 0; left 1 -> right 0 (merged with 0); left 2 split over right 1 and 2
    left = np.array([0] * 10 + [1] * 10 + [2] * 10)
    right = np.array([0] * 10 + [0] * 10 + [1] * 5 + [2] * 5)
    mp = mapping(contingency(left, right), split_fraction=0.25, min_cluster_size=5)
    assert mp.left.tolist() == [0, 1, 2]
    assert mp.is_merged.tolist() == [True, True, False]
    assert mp.is_split.tolist() == [False, False, True]
    assert mp.best_right.tolist() == [0, 0, 1] and mp.best_fraction.tolist() == [1.0, 1.0, 0.5]
    small = mapping(contingency(left, right), split_fraction=0.25, min_cluster_size=11)
    assert len(small.left) == 0  # below the minimum size: nothing reported


def test_class_tfidf_names_each_cluster() -> None:
    texts = ["a red boat on the sea", "the sea and a boat", "a tall tree", "tree and moss"]
    terms = class_tfidf([0, 0, 1, 1], texts, min_captions=2, min_term_count=2, top_terms=1)
    assert [(t.cluster, t.term) for t in terms] == [(0, "boat"), (1, "tree")]
    assert (
        class_tfidf([0, 0, 1], texts[:3], min_captions=2, min_term_count=1, top_terms=5)[-1].cluster
        == 0
    )
    assert tokens("The photo of a Boat's") == ["boat's"]


def test_communities_and_graphml_round_trip() -> None:
    nx = pytest.importorskip("networkx")
    a = np.array([0, 0, 1, 3, 3, 4])
    b = np.array([1, 2, 2, 4, 5, 5])
    w = np.ones(6)
    for method in ("auto", "greedy_modularity", "components"):
        c = find_communities(7, a, b, w, method=method, seed=0)
        m = c.membership.tolist()
        assert m[0] == m[1] == m[2] != m[3] == m[4] == m[5] != m[6], method
    doc = graphml(
        {"id": ["x", "y"], "n_images": [3, 4], "flag": [True, None]},
        {"source": ["x"], "target": ["y"], "npmi": [0.5]},
    )
    import io

    g = nx.read_graphml(io.BytesIO(doc))
    assert sorted(g.nodes) == ["x", "y"] and g.nodes["x"]["n_images"] == 3
    assert g.edges["x", "y"]["npmi"] == 0.5


def test_without_leidenalg_communities_fall_back_and_say_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    from exokiratory.passes.synthesis import communities

    real = importlib.util.find_spec

    def no_leiden(name: str, *args: object) -> object:
        return None if name in ("igraph", "leidenalg") else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(communities.importlib.util, "find_spec", no_leiden)
    a, b = np.array([0, 2]), np.array([1, 3])
    with caplog.at_level("WARNING"):
        c = find_communities(4, a, b, np.ones(2), method="auto")
    assert c.method == "greedy_modularity" and "pip install 'exokiratory[synthesis]'" in caplog.text
    with pytest.raises(RuntimeError, match=r"exokiratory\[synthesis\]"):
        find_communities(4, a, b, np.ones(2), method="leiden")


# -- the planted workspace ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = planted_workspace(tmp_path_factory.mktemp("synthesis"))
    reports = ws.run(["synthesis"])
    assert [r.name for r in reports] == [  # type: ignore[union-attr]
        "caption-clusters",
        "motif-bags",
        "structure-agreement",
    ]
    return ws


def test_motif_bags_hold_counts_areas_and_shares(planted: Workspace) -> None:
    bags = planted.sql("SELECT * FROM motif_bags WHERE space = 'clip' ORDER BY image_idx")
    rows = bags.to_pylist()
    assert len(rows) == N_TYPES * PER_TYPE
    assert planted.sql("SELECT count(*) AS n FROM motif_bags").to_pylist() == [{"n": 2 * len(rows)}]
    for r in rows:
        assert r["motif_ids"][:2] == [0, 1] and sum(r["motif_counts"]) == r["n_segments"]
        assert r["infrastructure_share"] == pytest.approx(2 / r["n_segments"])
        assert r["infrastructure_area_share"] == pytest.approx(
            0.7 / (0.7 + 0.05 * (r["n_segments"] - 2)), rel=1e-4
        )
        assert r["depth_p50"] is None and r["ocr_n_chars"] is None
    notes = planted.sql("SELECT part, status, detail FROM motif_bags_notes").to_pylist()
    depth = next(n for n in notes if n["part"] == "aggregates:depth")
    assert depth["status"] == "skipped" and "run depth first" in depth["detail"]


def test_graph_recovers_the_planted_communities(planted: Workspace) -> None:
    edges = planted.sql("SELECT * FROM motif_cooccurrence WHERE space = 'clip'").to_pylist()
    kind = {m: t for t in range(N_TYPES) for m in fg_motifs(t)}
    for e in edges:
        a, b = e["motif_a"], e["motif_b"]
        same = a in kind and b in kind and kind[a] == kind[b]
        assert e["is_significant"] == same, e  # within a type, and only there
        assert e["n_shuffles"] == 20 and e["expected"] > 0
    nodes = planted.sql("SELECT * FROM motif_communities WHERE space = 'clip'").to_pylist()
    fg = [n for n in nodes if n["motif_id"] in kind]
    assert len(fg) == N_TYPES * FG_PER_TYPE
    truth = [kind[n["motif_id"]] for n in fg]
    assert adjusted_rand_score(truth, [n["community_id"] for n in fg]) == 1.0
    assert {n["community_size"] for n in fg} == {FG_PER_TYPE}
    infra = [n for n in nodes if n["is_infrastructure"]]
    assert len(infra) == 2 and all(n["degree"] == 0 and n["community_size"] == 1 for n in infra)
    # the DINOv2 motifs are the same segments under other ids: the same communities
    dino = {
        n["motif_id"]: n["community_id"]
        for n in planted.sql("SELECT * FROM motif_communities WHERE space = 'dino'").to_pylist()
    }
    assert adjusted_rand_score(truth, [dino[dino_of(n["motif_id"])] for n in fg]) == 1.0


def test_graphml_is_written_beside_the_tables(planted: Workspace) -> None:
    nx = pytest.importorskip("networkx")
    paths = graphml_paths(planted.storage)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "motif_cooccurrence_clip.graphml",
        "motif_cooccurrence_dino.graphml",
    ]
    g = nx.read_graphml(planted.storage.path(paths[0]))
    assert g.number_of_nodes() == 2 + N_TYPES * FG_PER_TYPE
    n_edges = planted.sql(
        "SELECT count(*) AS n FROM motif_cooccurrence WHERE space = 'clip' AND is_significant"
    )
    assert g.number_of_edges() == n_edges.to_pylist()[0]["n"]


def test_comparisons_find_the_planted_agreement_above_baseline(planted: Workspace) -> None:
    rows = {
        r["comparison_id"]: r for r in planted.sql("SELECT * FROM structure_agreement").to_pylist()
    }
    expected = {
        "image_vs_segment:clusters_clip@0~motif_bags_clip",
        "image_vs_segment:clusters_dino@0~motif_bags_dino",
        "language_vs_structure:clusters_clip@0~caption_clusters",
        "language_vs_structure:clusters_dino@0~caption_clusters",
        "clip_vs_dino_image:clusters_clip@0~clusters_dino@0",
        "clip_vs_dino_segment:motifs_clip~motifs_dino",
        "clip_vs_dino_segment:motif_bags_clip~motif_bags_dino",
    }
    assert set(rows) == expected
    for r in rows.values():
        assert r["ari"] > 0.85 and r["ami"] > 0.8, r
        assert abs(r["ari_baseline"]) < 0.05 and abs(r["ami_baseline"]) < 0.05, r
        assert r["is_above_baseline"] and r["n_shuffles"] == 10
        assert r["n"] == (len(planted_segments()) if r["unit"] == "segment" else N_TYPES * PER_TYPE)
    assert rows["clip_vs_dino_segment:motifs_clip~motifs_dino"]["ari"] == pytest.approx(1.0)
    assert rows["clip_vs_dino_segment:motifs_clip~motifs_dino"]["unit"] == "segment"
    cells = planted.sql(
        "SELECT * FROM structure_contingency WHERE comparison_id = "
        "'language_vs_structure:clusters_clip@0~caption_clusters'"
    ).to_pylist()
    assert len(cells) == N_TYPES and all(c["left_fraction"] == 1.0 for c in cells)
    mp = planted.sql("SELECT * FROM structure_mapping WHERE NOT is_split AND NOT is_merged")
    assert mp.num_rows == planted.sql("SELECT * FROM structure_mapping").num_rows > 0


def test_caption_terms_name_each_structural_cluster(planted: Workspace) -> None:
    top = planted.sql(
        "SELECT cluster_id, term, n_captions FROM caption_terms "
        "WHERE clustering = 'clusters_clip' AND rank = 1 ORDER BY cluster_id"
    ).to_pylist()
    assert [r["term"] for r in top] == [TYPE_WORDS[t][0] for t in range(N_TYPES)]
    assert all(r["n_captions"] == PER_TYPE for r in top)


def test_rerun_is_a_no_op_and_identical(planted: Workspace) -> None:
    before = {v: planted.sql(f"SELECT * FROM {v}") for v in SYNTHESIS_VIEWS}
    assert all(r.up_to_date for r in planted.run(["synthesis"]))  # type: ignore[union-attr]
    (d,) = planted.passes(["structure-agreement"])
    (b,) = planted.passes(["motif-bags"])
    with planted.catalog() as cat:  # recomputed from the same inputs: the same tables
        again = {**b.derive_outputs(cat), **{f"a{k}": v for k, v in d.derive_outputs(cat).items()}}  # type: ignore[attr-defined]
    for key, view in (
        ("", "motif_bags"),
        ("cooccurrence", "motif_cooccurrence"),
        ("communities", "motif_communities"),
        ("a", "structure_agreement"),
        ("acontingency", "structure_contingency"),
        ("aterms", "caption_terms"),
    ):
        assert _rows(again[key]) == _rows(before[view]), view


def _rows(t: pa.Table) -> list[tuple[object, ...]]:
    return sorted(tuple(map(repr, r.values())) for r in t.to_pylist())


def test_report_shows_the_section(planted: Workspace) -> None:
    pytest.importorskip("jinja2")
    page = Path(str(planted.report("synthesis", progress=False).local_path)).read_text("utf-8")
    start = page.index("<section id='synthesis'>")
    body = page[start : page.index("</section>", start)]
    assert "<svg" in body and body.count("<circle") == 2 * (2 + N_TYPES * FG_PER_TYPE)
    assert "ARI baseline" in body and "synthesis-heatmap" in body
    assert "beach" in body and "run depth first" in body


# -- missing inputs -------------------------------------------------------------------------
def test_missing_inputs_say_what_to_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    with caplog.at_level("WARNING", logger="exokiratory.passes.synthesis"):
        reports = ws.run(["synthesis"])
    assert "motif-bags: bags:clip skipped: no clip motifs: run segment-embed-clip" in caplog.text
    assert all(r.rows == 0 for r in reports)  # type: ignore[union-attr]
    notes = {
        r["part"]: r["detail"]
        for v in ("motif_bags_notes", "caption_clusters_notes", "structure_agreement_notes")
        for r in ws.sql(f"SELECT part, detail FROM {v} WHERE status = 'skipped'").to_pylist()
    }
    assert "run segment-embed-clip then motifs first" in notes["bags:clip"]
    assert "run caption first" in notes["caption_clusters"]
    assert "run embed-clip then clusters-clip first" in notes["labels:clusters_clip"]
    assert "run caption then caption-clusters first" in notes["labels:caption_clusters"]
    for v in SYNTHESIS_VIEWS:
        assert ws.sql(f"SELECT count(*) AS n FROM {v}").to_pylist() == [{"n": 0}]


def test_without_captions_the_structure_comparisons_still_run(tmp_path: Path) -> None:
    ws = planted_workspace(tmp_path, captions=False)
    ws.run(["synthesis"])
    kinds = {r["kind"] for r in ws.sql("SELECT kind FROM structure_agreement").to_pylist()}
    assert kinds == {"image_vs_segment", "clip_vs_dino_image", "clip_vs_dino_segment"}
    assert ws.sql("SELECT count(*) AS n FROM caption_terms").to_pylist() == [{"n": 0}]
    skipped = ws.sql("SELECT part FROM structure_agreement_notes WHERE status = 'skipped'")
    assert {"labels:caption_clusters", "caption_terms"} <= set(skipped.column("part").to_pylist())


def test_params_are_validated() -> None:
    from exokiratory.engine.registry import get_pass

    with pytest.raises(ValueError, match=r"passes\.motif-bags: spaces"):
        get_pass("motif-bags", {"spaces": ["clap"]})
    with pytest.raises(ValueError, match=r"passes\.structure-agreement: n_shuffles"):
        get_pass("structure-agreement", {"n_shuffles": 0})
