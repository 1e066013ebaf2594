"""Flag rules: the flags table, its parameters and its step edges are composed of the rules the
families register; a new rule is one function; the shared robust z-score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import Field

from exokiratory.core.robust import high_side_robust_z, median_sigma, robust_z
from exokiratory.engine.flag_rules import (
    Columns,
    FlagFrame,
    FlagRule,
    compose_params,
    compute_order,
    feature_columns,
    flag_rules,
    register_flag_rule,
    table_order,
)
from exokiratory.engine.registry import step_class
from exokiratory.engine.step import PassParams, validate_params
from exokiratory.passes.flags.table import (
    FLAGS_SCHEMA,
    KEY_FIELDS,
    PROVENANCE_FIELDS,
    FlagsParams,
    derive_flags,
)
from exokiratory.passes.sense.flag_rules import ImageQualityParams
from exokiratory.passes.sense.hashes import HASH_COLUMNS

N = 30


def _inputs(seed: int = 0) -> pa.Table:
    """A joined flags input table (as :func:`flags_input_sql` gives) with random signals."""
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {
        "image_id": [f"img{i:03d}" for i in range(N)],
        "image_idx": np.arange(N, dtype=np.int64),
        "status": ["unreadable" if i == 0 else "ok" for i in range(N)],
        "scan_error": ["OSError: gone" if i == 0 else None for i in range(N)],
        "n_paths": rng.integers(1, 3, N),
        "sense_error": [None if i > 1 else "DecodeError: bad" for i in range(N)],
    }
    for c in feature_columns(flag_rules()):
        if c in HASH_COLUMNS:
            cols[c] = pa.array(rng.integers(0, 2**63, N, dtype=np.uint64), pa.uint64())
        elif c in ("width", "height"):
            cols[c] = rng.integers(8, 2000, N)
        else:
            cols[c] = rng.uniform(0, 8, N)
    return pa.table(cols)


def _bright(frame: FlagFrame, p: BrightParams) -> Columns:
    score = frame.num("brightness_p50")
    flagged = frame.flag(score, (score > p.bright_threshold) & ~frame["is_dark"])
    return {"bright_score": score, "is_bright": flagged}


class BrightParams(ImageQualityParams):
    bright_threshold: float = Field(4.0, ge=0)


BRIGHT = FlagRule(
    "bright",
    (pa.field("bright_score", pa.float32()), pa.field("is_bright", pa.bool_())),
    _bright,
    order=25,
    params=BrightParams,
    features=("brightness_p50",),
    needs=("is_dark",),
)


def test_the_registered_rules_make_the_flags_table_and_its_step() -> None:
    rules = flag_rules()
    assert FLAGS_SCHEMA.names == [
        *(f.name for f in KEY_FIELDS),
        *(f.name for f in table_order(rules)),
        *(f.name for f in PROVENANCE_FIELDS),
    ]
    assert FLAGS_SCHEMA.names[-4:] == ["is_junk", "is_worth_gpu", "flags_version", "flags_params"]
    fields = {f for r in rules for f in r.params.model_fields}
    assert fields == set(FlagsParams.model_fields) and len(fields) == 30
    flags = step_class("flags")
    assert set(flags.reads) == {"sense", "probe", "cues"}
    assert set(flags.optional_reads) == {"embed-clip", "embed-dino", "zeroshot", "ocr"}
    assert flags.Params is FlagsParams
    names = [r.name for r in rules]
    assert names.index("low_information") < names.index("blurry")  # blurry needs it
    assert names.index("semantic_duplicates") < names.index("worth_gpu")


def test_a_new_rule_is_one_function_and_lands_in_its_block() -> None:
    rules = [*flag_rules(), BRIGHT]
    params_model = compose_params(rules, "Composed", __name__)
    p = params_model.model_validate({"bright_threshold": 5.0, "dark_threshold": 0.9})
    t = _inputs()
    out = derive_flags(t, p, "v-test", rules=rules)
    names = out.column_names
    assert names.index("is_tiny") + 1 == names.index("bright_score")  # order 25: after geometry
    assert names.index("is_bright") + 1 == names.index("text_heavy_score")
    score = t.column("brightness_p50").to_numpy()
    dark = np.asarray(out.column("is_dark").to_pylist())
    sensed = np.arange(N) > 1
    assert out.column("is_bright").to_pylist() == list(sensed & (score > 5.0) & ~dark)
    assert 0 < sum(out.column("is_bright").to_pylist()) < N - 2
    assert '"bright_threshold": 5.0' in out.column("flags_params")[0].as_py()
    with pytest.raises(ValueError, match="bright_treshold"):
        validate_params("flags", params_model, {"bright_treshold": 1})
    base = derive_flags(t, FlagsParams(dark_threshold=0.9), "v-test")
    assert base.schema.equals(FLAGS_SCHEMA)
    assert base.drop_columns(["flags_params"]).equals(
        out.drop_columns(["bright_score", "is_bright", "flags_params"])
    )


def test_registered_rules_give_the_documented_corrupt_and_routing_columns() -> None:
    out = derive_flags(_inputs(1), FlagsParams(), "v-test").to_pylist()
    assert out[0]["corrupt_reason"] == "OSError: gone" and out[0]["is_corrupt"]
    assert out[1]["corrupt_reason"] == "DecodeError: bad" and out[1]["text_heavy_score"] is None
    assert not out[1]["is_dark"] and not out[0]["is_worth_gpu"] and out[1]["is_junk"]
    for r in out[2:]:
        assert r["is_worth_gpu"] == (not r["is_junk"] and not r["is_near_duplicate"])
        assert r["has_exact_duplicates"] == (r["n_paths"] > 1)


def test_dependencies_order_the_rules_and_mistakes_are_named() -> None:
    def cols(*names: str) -> tuple[pa.Field, ...]:
        return tuple(pa.field(n, pa.bool_()) for n in names)

    def noop(frame: FlagFrame, p: PassParams) -> Columns:
        return {}

    a = FlagRule("a", cols("x"), noop, order=1, needs=("y",))
    b = FlagRule("b", cols("y"), noop, order=2, needs=("z",))
    c = FlagRule("c", cols("z"), noop, order=3)
    assert [r.name for r in compute_order([a, b, c])] == ["c", "b", "a"]
    assert [f.name for f in table_order([c, b, a])] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="cycle"):
        compute_order([a, b, FlagRule("c", cols("z"), noop, order=3, needs=("x",))])
    with pytest.raises(ValueError, match="unknown columns \\['y'\\]"):
        compute_order([a])
    with pytest.raises(ValueError, match="returned"):
        FlagRule("d", cols("w"), noop, order=1).run(
            FlagFrame(pa.table({}), np.ones(0, bool)), PassParams()
        )
    with pytest.raises(ValueError, match="both write \\['is_dark'\\]"):
        register_flag_rule(FlagRule("dark_again", cols("is_dark"), noop, order=5))

    class Other(PassParams):
        dark_threshold: float = 0.5

    with pytest.raises(ValueError, match="'dark_threshold' declared by both"):
        compose_params([*flag_rules(), FlagRule("o", cols("o"), noop, 1, Other)], "X", __name__)


def test_robust_z_sides_constants_and_groups() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0, np.nan, -50.0])
    med, sigma = median_sigma(x)  # type: ignore[misc]
    assert med == 3.0 and np.isclose(sigma, 1.4826 * 2.0)
    z = robust_z(x, "signed")
    assert np.isclose(z[5], 97 / sigma) and np.isclose(z[7], -53 / sigma) and z[6] == 0
    assert np.array_equal(robust_z(x), np.abs(z))
    assert np.array_equal(high_side_robust_z(x), np.maximum(z, 0))
    flat = np.array([2.0, 2.0, 2.0, 2.0, 7.0])
    assert robust_z(flat, constant=1e3).tolist() == [0, 0, 0, 0, 1e3]
    assert robust_z(flat, "high").tolist() == [0.0] * 5
    assert robust_z(np.array([1.0, np.nan])).tolist() == [0.0, 0.0]  # fewer than 3 finite
    grouped = robust_z(
        np.array([1.0, 1.1, 5.0, 5.5]),
        "signed",
        center=np.array([1.0, 1.0, 5.0, 5.0]),
        sigma=np.array([0.0, 0.0, 1.0, 1.0]),
        min_sigma=0.05,
    )
    assert np.allclose(grouped, [0.0, 2.0, 0.0, 0.5])
