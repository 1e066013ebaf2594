"""PASS 5 selection rules on crafted structure: cluster centroids, exemplars and spread picks,
motif outliers and rare motifs, high-entropy segments, user predicates, the budget and its
deterministic priority order (a larger budget extends a smaller one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from exokiratory.core.catalog import fetch_arrow
from exokiratory.passes.captions.select import (
    CaptionSelectParams,
    budget,
    segment_entropy_score,
    select_units,
)


class FakeCatalog:
    """The slice of :class:`exokiratory.core.catalog.Catalog` the selection uses, over crafted
    tables registered in a private DuckDB connection."""

    def __init__(self, tables: dict[str, pa.Table]):
        self.con = duckdb.connect()
        for name, t in tables.items():
            self.con.register(name, t)
        self.views = list(tables)

    def query(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        return fetch_arrow(self.con.execute(sql, list(params or [])))

    def scalar(self, sql: str) -> Any:
        return self.con.execute(sql).fetchone()[0]  # type: ignore[index]


def img(i: int) -> str:
    return f"img{i:03d}"


def images(n: int) -> pa.Table:
    return pa.table(
        {
            "image_id": [img(i) for i in range(n)],
            "image_idx": list(range(n)),
            "status": ["ok"] * n,
            "first_path": [f"/photos/{'fav' if i % 5 == 0 else 'misc'}/{i}.jpg" for i in range(n)],
        }
    )


def clusters(n: int = 20) -> pa.Table:
    """Level 0: two clusters of 10 (even / odd images), similarity falling with the index;
    level 1: one cluster of all 20. Exemplars: the 2 most similar of each cluster."""
    rows = []
    for i in range(n):
        c = i % 2
        rows.append((0, c, 1.0 - i / 100, i in (0, 1, 2, 3)))
        rows.append((1, 0, 1.0 - ((i * 7) % n) / 100, ((i * 7) % n) in (0, 1)))
    level, cid, sim, ex = zip(*rows, strict=True)
    ids = [img(i) for i in range(n) for _ in (0, 1)]
    return pa.table(
        {
            "image_id": ids,
            "image_idx": [int(x[3:]) for x in ids],
            "level": pa.array(level, pa.int8()),
            "k": pa.array([2 if lv == 0 else 1 for lv in level], pa.int32()),
            "cluster_id": pa.array(cid, pa.int32()),
            "similarity": pa.array(sim, pa.float32()),
            "is_exemplar": list(ex),
        }
    )


def segments(n_images: int, per_image: int = 3) -> pa.Table:
    rows = [
        {"segment_id": f"{img(i)}-{m:04d}", "image_id": img(i), "image_idx": i, "mask_index": m}
        for i in range(n_images)
        for m in range(per_image)
    ]
    return pa.Table.from_pylist(rows)


def motifs(segs: pa.Table) -> pa.Table:
    """Segment 0 of image 4 is an outlier; mask 2 of images 0..5 is a rare motif (cluster 9)."""
    rows = []
    for r in segs.to_pylist():
        rare = r["mask_index"] == 2 and r["image_idx"] < 6
        rows.append(
            {
                **r,
                "space": "clip",
                "cluster_id": 9 if rare else r["mask_index"],
                "similarity": 1.0 - r["image_idx"] / 100,
                "is_outlier": r["image_idx"] == 4 and r["mask_index"] == 0,
                "is_rare_motif": rare,
            }
        )
    return pa.Table.from_pylist(rows)


def stats(segs: pa.Table) -> pa.Table:
    """Flat (one-bin) histograms except the segments of image 7, which are uniform."""
    lab, lbp = [], []
    for r in segs.to_pylist():
        busy = r["image_idx"] == 7
        lab.append([1 / 16] * 48 if busy else ([1.0] + [0.0] * 15) * 3)
        lbp.append([0.1] * 10 if busy else [0.0] * 8 + [1.0, 0.0])
    return (
        segs.append_column("lab_hist", pa.array(lab, pa.list_(pa.float32())))
        .append_column("lbp_hist", pa.array(lbp, pa.list_(pa.float32())))
        .append_column("error", pa.nulls(segs.num_rows, pa.string()))
    )


@pytest.fixture
def catalog() -> FakeCatalog:
    segs = segments(20)
    return FakeCatalog(
        {
            "images": images(20),
            "segments": segs,
            "clusters_clip": clusters(),
            "motifs": motifs(segs),
            "segment_stats": stats(segs),
        }
    )


def _select(cat: FakeCatalog, **params: Any) -> list[dict[str, Any]]:
    p = CaptionSelectParams(spaces=("clip",), **params)
    return select_units(cat, p, "v1").to_pylist()  # type: ignore[arg-type]


def _reasons(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {r["unit_id"]: r["reasons"] for r in rows}


def test_cluster_rules_pick_centroid_exemplars_and_evenly_spaced_members(
    catalog: FakeCatalog,
) -> None:
    rows = _select(catalog, spread_per_cluster=2, high_entropy_fraction=0.0)
    reasons = _reasons(rows)
    # level 0: cluster 0 = even images by falling similarity; centroid = img000, exemplars
    # img000 and img002; spread ranks floor((j + 1) * 10 / 3) = 3, 6 -> img006, img012
    assert "centroid:clip:L0" in reasons[img(0)] and "centroid:clip:L0" in reasons[img(1)]
    assert "exemplar:clip:L0" in reasons[img(2)] and "exemplar:clip:L0" in reasons[img(3)]
    assert "spread:clip:L0" in reasons[img(6)] and "spread:clip:L0" in reasons[img(12)]
    assert "spread:clip:L0" in reasons[img(7)] and "spread:clip:L0" in reasons[img(13)]
    assert not any("spread:clip:L0" in r for u, r in reasons.items() if u in (img(8), img(4)))
    # img000 is the centroid of level 1 (weights x (1 + 0.5 x 1)) and of level 0, and an
    # exemplar of both: 3 x 1.5 + 2 x 1.5 + 3 + 2 = 12.5, the highest score
    top = rows[0]
    assert top["unit_id"] == img(0) and top["priority"] == 1
    assert top["reasons"] == [
        "centroid:clip:L0",
        "centroid:clip:L1",
        "exemplar:clip:L0",
        "exemplar:clip:L1",
    ]
    assert top["priority_score"] == pytest.approx(12.5)
    assert [r["priority"] for r in rows] == list(range(1, len(rows) + 1))
    scores = [r["priority_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_motif_outliers_rare_members_and_high_entropy_segments(catalog: FakeCatalog) -> None:
    rows = _select(catalog, rare_per_motif=3, high_entropy_fraction=0.05, spread_per_cluster=0)
    reasons = _reasons(rows)
    assert reasons["img004-0000"] == ["motif_outlier:clip"]
    rare = sorted(u for u, r in reasons.items() if "rare_motif:clip" in r)
    assert rare == ["img000-0002", "img001-0002", "img002-0002"]  # 3 closest to the centroid
    # 60 segments x 5 % = 3: the three segments of image 7 (uniform histograms)
    busy = sorted(u for u, r in reasons.items() if "high_entropy" in r)
    assert busy == ["img007-0000", "img007-0001", "img007-0002"]
    seg = next(r for r in rows if r["unit_id"] == "img007-0001")
    assert (seg["unit_kind"], seg["image_id"], seg["segment_id"], seg["mask_index"]) == (
        "segment",
        img(7),
        "img007-0001",
        1,
    )


def test_entropy_score_is_zero_for_flat_and_one_for_uniform_histograms() -> None:
    flat_lab = np.tile(np.eye(16)[0], 3)[None]
    flat_lbp = np.eye(10)[8][None]
    uniform = segment_entropy_score(np.full((1, 48), 1 / 16), np.full((1, 10), 0.1))
    assert segment_entropy_score(flat_lab, flat_lbp)[0] == pytest.approx(0.0)
    assert uniform[0] == pytest.approx(1.0)
    half = segment_entropy_score(np.full((1, 48), 1 / 16), flat_lbp)
    assert half[0] == pytest.approx(0.5)


def test_user_predicate_comes_first_and_a_bad_one_names_the_key(catalog: FakeCatalog) -> None:
    rows = _select(catalog, user_where="path LIKE '%/fav/%' AND unit_kind = 'image'")
    users = [r for r in rows if "user" in r["reasons"]]
    assert sorted(r["unit_id"] for r in users) == [img(i) for i in (0, 5, 10, 15)]
    assert {r["priority"] for r in users} == {1, 2, 3, 4}  # weight 100: before everything
    with pytest.raises(RuntimeError, match=r"passes\.caption-select\.user_where"):
        _select(catalog, user_where="no_such_column = 1")
    with pytest.raises(ValueError, match="one SQL predicate"):
        CaptionSelectParams(user_where="true; DROP TABLE images")
    with pytest.raises(ValueError, match="unknown space"):
        CaptionSelectParams(spaces=("sift",))


def test_budget_keeps_a_prefix_of_the_priority_order(catalog: FakeCatalog) -> None:
    everything = _select(catalog, max_units=None)
    n_units = 20 + 60
    assert len(everything) < n_units  # selective: fewer units than exist
    small = _select(catalog, max_units=5)
    larger = _select(catalog, max_units=12)
    assert [r["unit_id"] for r in small] == [r["unit_id"] for r in larger[:5]]
    assert [r["unit_id"] for r in larger] == [r["unit_id"] for r in everything[:12]]
    by_fraction = _select(catalog, max_units=None, fraction=0.1)  # ceil(0.1 x 80) = 8
    assert [r["unit_id"] for r in by_fraction] == [r["unit_id"] for r in everything[:8]]
    assert budget(CaptionSelectParams(max_units=50, fraction=0.5), 80) == 40
    assert budget(CaptionSelectParams(max_units=None), 80) == 80
    again = _select(catalog, max_units=None)
    assert again == everything  # deterministic
    versions = {r["selection_version"] for r in everything}
    assert len(versions) == 1 and next(iter(versions)).startswith("v1+")
    assert {r["selection_version"] for r in small} != versions  # the budget is a parameter


def test_no_structure_selects_nothing() -> None:
    cat = FakeCatalog({"images": images(3)})
    assert _select(cat) == []
