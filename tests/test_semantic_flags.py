"""Semantic flag rules on crafted input tables (pure functions of PASS 1, cues and zero-shot)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from exokiratory.core.catalog import fetch_arrow
from exokiratory.passes.flags.semantic import (
    CUE_COLUMNS,
    SEMANTIC_FIELDS,
    ZEROSHOT_COLUMNS,
    SemanticFlagsParams,
    align_inputs,
    semantic_flag_columns,
    semantic_inputs_sql,
)
from exokiratory.passes.flags.table import FLAGS_SCHEMA, FlagsParams

P = SemanticFlagsParams()

#: typical PASS 1 values (from bench/semantic_flags_agreement.py's labelled images)
PHOTO = dict(
    text_likeness_score=0.0,
    noise_score=2.5,
    n_colors=30000,
    entropy_score=7.4,
    saturation_mean=0.3,
    brightness_p50=0.45,
    edge_density=0.14,
)
SCAN = dict(
    text_likeness_score=0.8,
    noise_score=1.7,
    n_colors=160,
    entropy_score=2.3,
    saturation_mean=0.0,
    brightness_p50=1.0,
    edge_density=0.08,
)
GRAPHIC = dict(
    text_likeness_score=0.0,
    noise_score=0.1,
    n_colors=300,
    entropy_score=1.8,
    saturation_mean=0.5,
    brightness_p50=0.6,
    edge_density=0.02,
)


def _pass1(rows: list[dict[str, float]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def _inputs(rows: list[dict[str, float | None]]) -> pa.Table:
    names = (*CUE_COLUMNS, *ZEROSHOT_COLUMNS)
    return pa.table({c: pa.array([r.get(c) for r in rows], pa.float64()) for c in names})


def _run(pass1: list[dict[str, float]], inputs=None, sensed=None, p=P):  # type: ignore[no-untyped-def]
    n = len(pass1)
    s = np.ones(n, bool) if sensed is None else np.asarray(sensed)
    out = semantic_flag_columns(_pass1(pass1), p, s, inputs)
    return {k: v.to_pylist() for k, v in out.items()}


def test_pass1_alone_is_todays_text_rule_and_types_each_modality() -> None:
    out = _run([PHOTO, SCAN, GRAPHIC])
    assert out["modality"] == ["photo", "scan", "graphic"]
    assert out["is_photo"] == [True, False, False] and out["is_scan"] == [False, True, False]
    assert out["is_graphic"] == [False, False, True]
    assert out["is_text_heavy"] == [False, True, False]
    assert np.allclose(out["text_heavy_score"], [0.0, 0.8, 0.0])
    assert out["human_present_score"] == [None] * 3  # no cues, no zero-shot: unknown
    assert out["is_human_present"] == [False] * 3
    assert out["semantic_inputs"] == ["pass1"] * 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "text_likeness_score": st.floats(0, 1),
                "noise_score": st.floats(0, 50),
                "n_colors": st.integers(1, 200_000).map(float),
                "entropy_score": st.floats(0, 8),
                "saturation_mean": st.floats(0, 1),
                "brightness_p50": st.floats(0, 1),
                "edge_density": st.floats(0, 1),
            }
        ),
        min_size=1,
        max_size=12,
    ),
    st.floats(0, 1),
)
def test_scores_are_bounded_and_modality_is_the_argmax(rows, w) -> None:  # type: ignore[no-untyped-def]
    p = SemanticFlagsParams(zeroshot_weight=w)
    out = _run(rows, p=p)
    scores = np.array([out[f"modality_{m}_score"] for m in ("photo", "scan", "graphic")]).T
    assert np.allclose(scores.sum(1), 1, atol=1e-5) and (scores >= 0).all()
    best = np.array(["photo", "scan", "graphic"])[scores.argmax(1)]
    assert list(best) == out["modality"]
    flags = np.array([out["is_photo"], out["is_scan"], out["is_graphic"]]).T
    assert (flags.sum(1) == 1).all()
    # PASS 1 only: exactly the old rule
    text = np.array([r["text_likeness_score"] for r in rows])
    assert out["is_text_heavy"] == list(text >= p.text_heavy_threshold)
    assert all(0 <= d <= 1 for d in out["dense_scene_score"])


def test_the_detector_adds_text_evidence_and_faces_add_humans() -> None:
    low_text_page = {**SCAN, "text_likeness_score": 0.2}
    inputs = _inputs(
        [
            {"text_area_fraction": 0.0, "n_faces": 1},
            {"text_area_fraction": 0.25, "n_faces": 0},
            {"text_area_fraction": 0.03, "n_faces": 0},
        ]
    )
    out = _run([PHOTO, low_text_page, GRAPHIC], inputs)
    assert out["is_text_heavy"] == [False, True, False]
    assert np.allclose(out["text_heavy_score"], [0.0, 1.0, 0.2])
    assert np.allclose(out["human_present_score"], [0.9, 0.0, 0.0])
    assert out["is_human_present"] == [True, False, False]
    assert out["modality"] == ["photo", "scan", "graphic"]
    assert out["semantic_inputs"] == ["pass1+cues"] * 3


def test_zero_shot_mixes_in_and_a_face_or_a_person_is_a_noisy_or() -> None:
    zs = {"zs_photo": 0.1, "zs_scan": 0.1, "zs_graphic": 0.8, "zs_person": 0.8}
    zs |= {"zs_dense": 1.0, "zs_text_heavy": 1.0}
    inputs = _inputs([{**zs}, {**zs, "text_area_fraction": 0.0, "n_faces": 2}, {}])
    out = _run([PHOTO, PHOTO, PHOTO], inputs)
    assert np.allclose(out["human_present_score"][:2], [0.8, 1 - 0.1 * 0.2])
    assert out["human_present_score"][2] is None
    assert out["semantic_inputs"] == ["pass1+zeroshot", "pass1+cues+zeroshot", "pass1"]
    assert np.isclose(out["text_heavy_score"][0], P.zeroshot_weight)  # 0.6 * 0 + 0.4 * 1
    alone = _run([PHOTO])
    assert out["dense_scene_score"][0] > alone["dense_scene_score"][0]
    assert out["modality_graphic_score"][0] > alone["modality_graphic_score"][0]
    everything = _run([PHOTO], _inputs([zs]), p=SemanticFlagsParams(zeroshot_weight=1.0))
    assert everything["modality"] == ["graphic"]  # weight 1: zero-shot decides
    assert np.isclose(everything["modality_graphic_score"][0], 0.8)


def test_unsensed_rows_get_nulls_and_false() -> None:
    inputs = _inputs([{"text_area_fraction": 0.5, "n_faces": 3, "zs_person": 1.0}])
    out = _run([SCAN], inputs, sensed=[False])
    for name in ("text_heavy_score", "modality", "human_present_score", "dense_scene_score"):
        assert out[name] == [None], name
    assert out["is_text_heavy"] == out["is_human_present"] == out["is_scan"] == [False]


def test_flags_schema_and_params_carry_the_semantic_fields() -> None:
    for f in SEMANTIC_FIELDS:
        assert FLAGS_SCHEMA.field(f.name).type == f.type
    fp = FlagsParams(human_present_threshold=0.95, zeroshot_weight=0.0)
    assert fp.text_heavy_threshold == 0.6 and fp.human_present_threshold == 0.95


def test_inputs_sql_pivots_zero_shot_and_skips_tiny_models() -> None:
    con = duckdb.connect()
    cues = pa.table(
        {
            "image_id": ["a", "b", "c"],
            "text_area_fraction": pa.array([0.1, 0.0, None], pa.float32()),
            "n_faces": pa.array([0, 2, None], pa.int32()),
            "error": [None, None, "DecodeError: bad"],
        }
    )
    groups = [("modality", "photo", 0.7), ("modality", "scan", 0.2), ("modality", "graphic", 0.1)]
    groups += [("human", "person", 0.6), ("human", "no_person", 0.4)]
    zs_rows = [
        {"image_id": i, "group_id": g, "class_id": c, "prob": p, "model_id": m}
        for i, m in (("a", "openai/clip-vit-base-patch32"), ("d", "tiny:clip"))
        for g, c, p in groups
    ]
    con.register("cues", cues)
    con.register("zeroshot", pa.Table.from_pylist(zs_rows))
    assert semantic_inputs_sql([]) is None
    got = fetch_arrow(con.sql(semantic_inputs_sql(["cues", "zeroshot"])))  # type: ignore[arg-type]
    aligned = align_inputs(pa.array(["d", "c", "b", "a", "e"]), got).to_pylist()
    assert [r["image_id"] for r in aligned] == [None, None, "b", "a", None]
    a = aligned[3]
    assert np.isclose(a["zs_photo"], 0.7) and np.isclose(a["zs_person"], 0.6)
    assert a["zs_dense"] is None and np.isclose(a["text_area_fraction"], 0.1)
    assert aligned[2]["n_faces"] == 2 and aligned[2]["zs_photo"] is None
    only_cues = fetch_arrow(con.sql(semantic_inputs_sql(["cues"])))  # type: ignore[arg-type]
    assert sorted(only_cues["image_id"].to_pylist()) == ["a", "b"]


def test_slices_give_the_columns_of_one_piece(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The rules run over row slices (bounded temporaries at 10^7 rows): the same columns."""
    from exokiratory.passes.flags import semantic

    rng = np.random.default_rng(0)
    base = [PHOTO, SCAN, GRAPHIC]
    rows = [{k: v * rng.uniform(0.5, 1.5) for k, v in base[i % 3].items()} for i in range(23)]
    zs = {"zs_photo": 0.1, "zs_scan": 0.1, "zs_graphic": 0.8, "zs_person": 0.8, "zs_dense": 1.0}
    inputs = _inputs([zs if i % 4 == 0 else {"n_faces": i % 2} for i in range(23)])
    sensed = rng.random(23) > 0.2
    whole = _run(rows, inputs, sensed)
    monkeypatch.setattr(semantic, "SLICE_ROWS", 5)
    assert _run(rows, inputs, sensed) == whole
