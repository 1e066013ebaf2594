"""Sampling: balanced hierarchical vs uniform on a hierarchy with one dominant and several rare
clusters, stratified sampling, determinism, versions, growth, the ``samples`` views, the CLI."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exokiratory import Workspace
from exokiratory.api.cli import app
from exokiratory.core.samples import sample_versions
from exokiratory.passes.sample.columns import UnknownColumnError
from exokiratory.passes.sample.ranking import balanced_order, stratified_order, uniform_order
from exokiratory.passes.sample.summary import distance_row

from .sample_data import FINE_TO_COARSE, RARE_FINE, Truth, make_sample_workspace


# -- pure draw orders ---------------------------------------------------------------------------
def _hierarchy(n_dominant: int = 300, rare: int = 4) -> tuple[np.ndarray, np.ndarray]:
    fine = np.r_[np.arange(n_dominant) % 6, np.repeat(RARE_FINE, rare)]
    coarse = np.array([FINE_TO_COARSE[f] for f in fine])
    return np.c_[coarse, fine], np.arange(len(fine)) * 7 + 3  # image_idx need not be dense


def test_balanced_covers_every_cluster_where_uniform_does_not() -> None:
    paths, idx = _hierarchy()
    n = 30
    uniform_missed = 0
    for seed in range(10):
        order = balanced_order(idx, paths, seed)
        assert sorted(order) == list(range(len(idx)))  # a permutation
        head = paths[order[:n]]
        assert set(head[:, 1]) == set(range(10)), seed  # every fine cluster, rare ones too
        # water-filling at the top: the rare coarse clusters (8 images each) are taken whole
        # and the dominant one gets the rest
        assert Counter(head[:, 0].tolist()) == {0: 14, 1: 8, 2: 8}
        # every prefix is balanced at the coarse level (within one while none is exhausted)
        for k in range(3, 25, 3):
            counts = np.bincount(paths[order[:k], 0], minlength=3)
            assert counts.max() - counts.min() <= 1, (seed, k, counts)
        u = paths[uniform_order(idx, seed)[:n]]
        uniform_missed += not set(RARE_FINE) <= set(u[:, 1])
    assert uniform_missed >= 9  # P(uniform covers the 4 rare clusters) is about 0.01


def test_orders_are_deterministic_and_stable_when_images_are_added() -> None:
    paths, idx = _hierarchy()
    a, b = balanced_order(idx, paths, 5), balanced_order(idx, paths, 5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, balanced_order(idx, paths, 6))
    # uniform: images added later do not reshuffle the others (keys hash image_idx)
    more = np.r_[idx, np.arange(10_000, 10_050)]
    old = set(range(len(idx)))
    full = [i for i in uniform_order(more, 1) if i in old]
    assert np.array_equal(np.array(full), uniform_order(idx, 1))


def test_stratified_equal_and_proportional() -> None:
    strata = np.r_[np.zeros(90, int), np.ones(9, int), np.full(1, 2)]
    idx = np.arange(len(strata))
    eq = strata[stratified_order(idx, strata, 0, "equal")[:9]]
    assert Counter(eq.tolist()) == {0: 4, 1: 4, 2: 1}  # the singleton taken, rest shared
    prop = strata[stratified_order(idx, strata, 0, "proportional")[:20]]
    c = Counter(prop.tolist())
    assert 17 <= c[0] <= 19 and 1 <= c[1] <= 3
    with pytest.raises(ValueError, match="allocation"):
        stratified_order(idx, strata, 0, "other")


def test_distances() -> None:
    d = distance_row(np.array([150, 6, 6]), np.array([4, 4, 4]))
    assert d["tv_sample_uniform"] == pytest.approx(0.0)
    assert d["kl_sample_uniform"] == pytest.approx(0.0)
    assert d["tv_population_uniform"] == pytest.approx(0.5 * (150 / 162 - 1 / 3) * 2)
    assert d["tv_sample_population"] == d["tv_population_uniform"]
    assert d["kl_sample_population"] > 0.5


# -- on a workspace -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    root = tmp_path_factory.mktemp("sample")
    _ws, truth = make_sample_workspace(root)
    return root / "ws", truth


@pytest.fixture
def ws_truth(built: tuple[Path, Truth], tmp_path: Path) -> tuple[Workspace, Truth]:
    """A fresh copy of the built workspace (tests write samples into it)."""
    dest = tmp_path / "ws"
    shutil.copytree(built[0], dest, symlinks=True)
    return Workspace(dest), built[1]


def _ids(ws: Workspace, name: str, version: int | None = None) -> list[str]:
    view = "samples" if version else "samples_current"
    v = f"AND version = {version}" if version else ""
    t = ws.sql(f"SELECT image_id FROM {view} WHERE sample = '{name}' {v} ORDER BY rank")
    return t.column("image_id").to_pylist()


def test_balanced_vs_uniform_on_a_workspace(ws_truth: tuple[Workspace, Truth]) -> None:
    ws, truth = ws_truth
    with ws.catalog() as cat:
        assert "samples" not in cat.views  # no sample yet: no view
    bal = ws.sample("bal", 20)
    uni = ws.sample("uni", 20, rule="uniform")
    bal_ids, uni_ids = _ids(ws, "bal"), _ids(ws, "uni")
    assert len(bal_ids) == len(set(bal_ids)) == 20
    assert set(bal_ids) <= truth.eligible  # junk and near duplicates left out by default
    assert {truth.fine[i] for i in bal_ids} == set(range(10))  # every cluster
    assert not set(RARE_FINE) <= {truth.fine[i] for i in uni_ids}  # uniform misses rare ones
    assert bal.excluded == {"junk": 2, "near-duplicates": 2} and bal.eligible == 162
    dist = {r["grouping"]: r for r in bal.distances.to_pylist()}
    udist = {r["grouping"]: r for r in uni.distances.to_pylist()}
    assert (
        dist["clip level 1"]["tv_sample_uniform"] < 0.1 < udist["clip level 1"]["tv_sample_uniform"]
    )
    strata = {r["stratum"]: r for r in bal.strata.to_pylist() if r["grouping"] == "clip level 1"}
    assert strata["1"] == {**strata["1"], "population": 6, "sampled": 6}
    text = bal.summary()
    assert "clip level 1" in text and "TV from uniform" in text and "2 junk" in text
    rows = ws.sql("SELECT * FROM samples WHERE sample = 'bal'").to_pylist()
    assert {r["rule"] for r in rows} == {"balanced:clip"} and {r["seed"] for r in rows} == {0}
    fine_of = {r["image_id"]: r["stratum"] for r in rows}
    assert all(s.split("/")[1] == str(truth.fine[i]) for i, s in fine_of.items())
    # the strata and distances tables are views too
    n = ws.sql("SELECT count(*) FROM samples_distances WHERE sample = 'bal'").column(0)[0]
    assert n.as_py() == 2


def test_determinism_versions_and_growth(ws_truth: tuple[Workspace, Truth]) -> None:
    ws, _truth = ws_truth
    first = ws.sample("s", 10, seed=3)
    again = ws.sample("s", 10, seed=3)
    assert first.written and not again.written and again.version == 1
    assert sample_versions(ws.storage, "s") == [1]
    small = _ids(ws, "s", 1)
    grown = ws.sample("s", 25, seed=3)
    assert grown.version == 2 and grown.kept == 10
    big = _ids(ws, "s", 2)
    assert big[:10] == small  # growing keeps the earlier members, in order
    # the same arguments under another name reproduce it exactly (a fresh draw of 25)
    ws.sample("fresh", 25, seed=3)
    assert _ids(ws, "fresh") == big
    shrunk = ws.sample("s", 5, seed=3)
    assert shrunk.version == 3 and _ids(ws, "s", 3) == small[:5]
    with pytest.raises(ValueError, match="other arguments"):
        ws.sample("s", 10, seed=4)
    replaced = ws.sample("s", 10, seed=4, replace=True)
    assert replaced.version == 4 and replaced.kept == 0
    current = ws.sql("SELECT DISTINCT version FROM samples_current WHERE sample = 's'")
    assert current.column(0).to_pylist() == [4]
    # a different seed draws a different sample
    assert _ids(ws, "s", 4) != small


def test_stratified_by_column_include_rules_and_errors(ws_truth: tuple[Workspace, Truth]) -> None:
    ws, truth = ws_truth
    r = ws.sample("bymod", 9, by="modality")
    assert r.rule == "stratified:modality"
    got = ws.sql("SELECT stratum, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1").to_pylist()
    assert got == [
        {"stratum": "graphic", "n": 3},
        {"stratum": "photo", "n": 3},
        {"stratum": "scan", "n": 3},
    ]
    # junk kept when asked; the where clause sees the flags columns
    ws.sample("all", 300, rule="uniform", include_junk=True, include_duplicates=True)
    assert set(_ids(ws, "all")) == set(truth.fine)
    ws.sample("text", 50, rule="uniform", where="is_text_heavy")
    assert {FINE_TO_COARSE[truth.fine[i]] for i in _ids(ws, "text")} == {1}
    with pytest.raises(UnknownColumnError, match=r"available: .*modality"):
        ws.sample("bad", 5, by="no_such_column")
    with pytest.raises(ValueError, match="clusters_dino"):
        ws.sample("dino", 5, space="dino")
    with pytest.raises(ValueError, match="bad sample name"):
        ws.sample("../x", 5)


def test_cli_sample(ws_truth: tuple[Workspace, Truth]) -> None:
    ws, _truth = ws_truth
    runner = CliRunner()
    args = ["sample", "cli", "--size", "12", "-w", ws.storage.url, "--seed", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "sample 'cli' v1 written: 12 images" in res.output
    assert "stratum (clip level 1)" in res.output
    res = runner.invoke(app, args)
    assert "unchanged" in res.output
    assert len(_ids(ws, "cli")) == 12
