"""Generative probing (PASS 8): the measures on known vectors, units and prompts, init and
control images, the tiny random-weight diffusers pipeline (loaded through ``from_pretrained``,
seeded), the pass end to end on tiny models (bad input, "run X first", rerun = same rows), and
SIGKILL + rerun = the uninterrupted tables."""

from __future__ import annotations

import importlib.util
import io
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

if any(importlib.util.find_spec(m) is None for m in ("torch", "diffusers", "faiss")):
    pytest.skip("needs torch, diffusers and faiss (the ml extra)", allow_module_level=True)

from exokiratory import Workspace
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.layout import CONFIG_FILE
from exokiratory.core.prompts.registry import CaptionPrompt
from exokiratory.engine.step import BatchContext
from exokiratory.models.registry import LICENSES, resolve
from exokiratory.passes.genprobe import inputs, measures
from exokiratory.passes.genprobe.step import GenProbePass

from .conftest import table_rows

TINY = {
    "model": "tiny",
    "controlnet_depth": "tiny",
    "controlnet_canny": "tiny",
    "size": 32,
    "steps": 2,
    "strengths": [0.5, 1.0],
    "seeds": [0],
    "max_exemplars": 2,
    "level": 0,
    "image_format": "png",
}


# -- measures on known vectors -------------------------------------------------------------------
def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def _space() -> measures.Space:
    """Two real clusters (around x and y); exemplar ``a`` of cluster 0. Its generations at
    strength 0.25 stay near x; at 0.75 they drift to y (the other cluster); one generation at
    0.75 points mostly along z, away from every real image (a hole)."""
    x, y = _unit([1, 0, 0]), _unit([0, 1, 0])
    rng = np.random.default_rng(0)
    real = np.stack([_unit(c + 0.05 * rng.normal(size=3)) for c in [x] * 10 + [y] * 10])
    real_ids = [f"r{i}" for i in range(20)]
    real_ids[0] = "a"
    g = np.stack(
        [_unit([1, 0.05, 0]), _unit([1, -0.05, 0]), _unit([0.1, 1, 0]), _unit([0, 0.3, 1])]
    )
    s = measures.Space(
        "clip",
        gen_id=["g0", "g1", "g2", "g3"],
        image_id=["a"] * 4,
        conditioning=["none"] * 4,
        strength=np.asarray([0.25, 0.25, 0.75, 0.75], np.float32),
        seed=np.asarray([0, 1, 0, 1]),
        g=measures.normalise(g),
        e=np.stack([real[0]] * 4),
        real_ids=real_ids,
        real=measures.normalise(real),
        level=0,
        centroids=np.stack([x, y]),
        cluster_of={rid: (0 if i < 10 else 1) for i, rid in enumerate(real_ids)},
    )
    return s


def test_stability_holes_and_reconstruction_on_known_vectors() -> None:
    s, p = _space(), measures.MeasuresParams(k=3)
    h = measures.holes(s, p)
    assert h.column("is_hole").to_pylist() == [False, False, False, True]
    assert h.column("nearest_cluster_id").to_pylist()[:3] == [0, 0, 1]
    assert h.column("hole_score")[3].as_py() > 1 > h.column("hole_score")[0].as_py()
    stab, per_cluster = measures.stability(s, h.column("is_hole").to_numpy(), p)
    rows = {r["strength"]: r for r in stab.to_pylist()}
    assert rows[0.25]["stability_score"] == 1.0 and rows[0.25]["is_stable"]
    assert rows[0.75]["stability_score"] == 0.0 and not rows[0.75]["is_stable"]
    assert rows[0.75]["hole_fraction"] == 0.5 and rows[0.25]["hole_fraction"] == 0.0
    assert per_cluster.column("leave_strength").to_pylist() == [0.75, 0.75]
    ex = measures.exemplar_table(s, stab, p, {"a": {"embedding_outlier_score": 1.5}})
    (r,) = ex.to_pylist()
    assert r["leave_strength"] == 0.75 and r["max_stable_strength"] == 0.25
    assert r["reconstruction_strength"] == 0.25 and r["embedding_outlier_score"] == 1.5
    want = 1 - float(np.mean(s.g[:2] @ s.e[0]))
    assert r["reconstruction_distance"] == pytest.approx(want, abs=1e-6)


def test_fragile_motif_drops_while_the_style_holds() -> None:
    s, p = _space(), measures.MeasuresParams(k=3)
    h = measures.holes(s, p)
    stab, _ = measures.stability(s, h.column("is_hole").to_numpy(), p)
    # the exemplar's vector holds x and some z; its low-strength generations keep x, lose z
    s.e = np.stack([_unit([1, 0, 0.6])] * 4)
    m7, m8, m9 = (
        measures.Motif(c, _unit(v)) for c, v in ((7, [0, 0, 1]), (8, [1, 0, 0]), (9, [0, 1, 0]))
    )
    t = measures.fragile(s, stab, {"a": [(m7, 2), (m8, 1), (m9, 1)]}, p)
    low = {r["motif_cluster_id"]: r for r in t.to_pylist() if r["strength"] == 0.25}
    assert low[7]["fragility_score"] > 0.9 and low[7]["is_fragile"]  # gone, style kept
    assert low[7]["stay_fraction"] == 1.0 and low[7]["n_segments"] == 2
    assert low[8]["fragility_score"] < 0 and not low[8]["is_fragile"]  # kept
    assert low[9]["fragility_score"] is None and not low[9]["is_fragile"]  # not in the exemplar
    high = {r["motif_cluster_id"]: r for r in t.to_pylist() if r["strength"] == 0.75}
    assert high[8]["fragility_score"] > 0.25 and not high[8]["is_fragile"]  # the style left
    assert measures.rank_correlation([1, 2, 3, None], [2, 4, 9, 1]) == pytest.approx(1.0)
    assert measures.rank_correlation([1, 2], [1, 2]) is None


# -- units, prompts, images ----------------------------------------------------------------------
def test_units_keys_prompts_and_params() -> None:
    prompt = CaptionPrompt(id="genprobe_v1", version="1", task="caption", text="a photo")
    ex = [
        {
            "image_id": "a" * 32,
            "image_idx": 3,
            "cluster_id": 1,
            "level": 0,
            "path": "/p",
            "source": "/",
            "caption": {"text": "a red car", "prompt_id": "caption_v1", "prompt_version": "1"},
            "depth": None,
        },
        {
            "image_id": "b" * 32,
            "image_idx": 5,
            "cluster_id": 0,
            "level": 0,
            "path": "/q",
            "source": "/",
            "caption": None,
            "depth": None,
        },
    ]
    t = inputs.unit_table(ex, ("none", "depth"), (0.25, 0.5), (0, 1), prompt, True)
    assert t.num_rows == 16 and t.column_names[0] == "gen_id"
    assert "image_id" not in t.column_names  # parts are named from gen_id, not image_id
    ids = t.column("gen_id").to_pylist()
    assert len(set(ids)) == 16 and ids[0] == "a" * 32 + "-none-s0250-r0"
    rows = t.to_pylist()
    assert {(r["prompt_source"], r["prompt_text"]) for r in rows[:8]} == {("caption", "a red car")}
    assert {(r["prompt_id"], r["prompt_version"]) for r in rows[8:]} == {("genprobe_v1", "1")}
    no_caps = inputs.unit_table(ex, ("none",), (0.5,), (0,), prompt, False)
    assert set(no_caps.column("prompt_source").to_pylist()) == {"registry"}
    with pytest.raises(ValueError, match="strengths"):
        GenProbePass({"strengths": [0.0, 0.5]})
    with pytest.raises(ValueError, match="multiple of 8"):
        GenProbePass({"size": 30})
    assert resolve("diffusion", "lite").model_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "OpenRAIL" in LICENSES[resolve("diffusion", "full").model_id]
    assert resolve("controlnet-depth", "tiny").model_id == "tiny:controlnet-depth"


def test_init_and_control_images(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 80, 3), 120, np.uint8)).save(buf, "PNG")
    init = inputs.init_image(buf.getvalue(), 32, 10**8)
    assert init.size == (32, 32) and init.mode == "RGB"
    depth_map = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))  # far to the right
    unit = {"depth_map": depth_map.ravel().tolist(), "depth_map_height": 4, "depth_map_width": 8}
    d = np.asarray(inputs.depth_control(unit, 32))
    assert d.shape == (32, 32, 3) and d[:, 0].mean() > d[:, -1].mean()  # near = white
    with pytest.raises(ValueError, match="run `exokiratory run depth` first"):
        inputs.depth_control({"depth_map": None}, 32)
    edges = np.zeros((32, 32, 3), np.uint8)
    edges[:, 16:] = 255
    c = np.asarray(inputs.canny_control(Image.fromarray(edges), 100, 200))
    assert c.shape == (32, 32, 3) and c.max() == 255 and c[:, :8].max() == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    p = GenProbePass(TINY)
    units = inputs.unit_table(
        [
            {
                "image_id": "c" * 32,
                "image_idx": 0,
                "cluster_id": 0,
                "level": 0,
                "path": str(bad),
                "source": str(tmp_path),
                "caption": None,
                "depth": None,
            }
        ],
        ("none",),
        (0.5,),
        (0,),
        CaptionPrompt(id="x", version="1", task="caption", text="t"),
        True,
    ).to_pylist()
    (req,) = p._requests(units, BatchContext(str(tmp_path)))
    assert isinstance(req, str) and req.startswith("cannot decode the exemplar")


# -- the tiny pipeline ---------------------------------------------------------------------------
def test_a_controlnet_keeps_the_probe_dtype(tmp_path: Path) -> None:
    """ControlNet pipelines share the base pipeline's models: adding one must not cast them
    (diffusers' from_pipe casts every shared component to float32 unless told the dtype; a
    float16 CUDA probe ran in float32 until a GPU run showed it)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from exokiratory.models.diffusion import DiffusionProbe, load_controlnet
    from exokiratory.models.tiny_diffusion import build_tiny_diffusion

    build_tiny_diffusion(tmp_path / "pipe")
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        str(tmp_path / "pipe"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch.float16,
    )
    probe = DiffusionProbe(resolve("diffusion", "tiny"), pipe, "cpu", torch.float16, False)
    control = load_controlnet(resolve("controlnet-canny", "tiny"), tmp_path, "cpu").half()
    probe.add_controlnet("canny", control)
    canny = probe._control["canny"]
    assert {pipe.unet.dtype, pipe.vae.dtype, canny.unet.dtype, canny.controlnet.dtype} == {
        torch.float16
    }


@pytest.mark.slow
def test_tiny_pipeline_is_seeded_and_controlnets_condition(tmp_path: Path) -> None:
    from exokiratory.models.diffusion import (
        GenerationRequest,
        GenerationSettings,
        load_controlnet,
        load_diffusion,
    )

    probe = load_diffusion(resolve("diffusion", "tiny"), tmp_path, "cpu")
    assert (tmp_path / "tiny-diffusion" / "model_index.json").is_file()  # a diffusers folder
    assert (tmp_path / "tiny-diffusion" / "tokenizer" / "merges.txt").is_file()
    probe.add_controlnet(
        "canny", load_controlnet(resolve("controlnet-canny", "tiny"), tmp_path, "cpu")
    )
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    s = GenerationSettings(steps=2)
    reqs = [
        GenerationRequest(img, "a cat", 0.5, 0),
        GenerationRequest(img, "a cat", 0.5, 1),
        GenerationRequest(img, "a cat", 0.5, 0, "canny", img),
    ]
    a, b, c = probe.generate(reqs, s)
    (again,) = probe.generate(reqs[:1], s)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, again) and not np.array_equal(a, b) and not np.array_equal(a, c)


# -- the pass ------------------------------------------------------------------------------------
def _collection(src: Path, n: int = 6) -> Path:
    src.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        colour = np.asarray([(i % 2) * 200, 60, (1 - i % 2) * 200], np.float64)
        base = np.zeros((40, 56, 3), np.float64) + colour
        arr = np.clip(base + rng.integers(0, 50, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"im{i}.png")
    return src


def _configure(ws: Workspace, **genprobe: object) -> Workspace:
    ws.config.passes.update(
        {
            "embed-clip": {"model": "tiny"},
            "embed-dino": {"model": "tiny"},
            "clusters-clip": {"cluster_size": 3},
            "clusters-dino": {"cluster_size": 3},
            "depth": {"model": "tiny", "routed_only": False},
            "genprobe": {**TINY, **genprobe},
        }
    )
    ws.storage.write_bytes_atomic(CONFIG_FILE, render_config(ws.config).encode("utf-8"))
    return Workspace(ws.storage.url)


def _upstream(root: Path, src: Path) -> Workspace:
    ws = _configure(Workspace.init(root, [str(src)], run=RunConfig(workers=1)))
    ws.scan(progress=False)
    ws.run(["embed-clip", "embed-dino", "clusters-clip", "clusters-dino"], progress=False)
    return ws


def test_missing_clusters_say_what_to_run(tmp_path: Path) -> None:
    ws = _configure(Workspace.init(tmp_path / "ws", [str(_collection(tmp_path / "src", 2))]))
    ws.scan(progress=False)
    with pytest.raises(RuntimeError, match="run `exokiratory run clusters-clip` first"):
        ws.run(["genprobe"], progress=False)
    assert GenProbePass().in_all(False) is False  # optional: run all only when configured


@pytest.mark.slow
def test_genprobe_end_to_end_on_tiny_models(tmp_path: Path) -> None:
    ws = _upstream(tmp_path / "ws", _collection(tmp_path / "src"))
    (rep,) = ws.run(["genprobe"], progress=False)  # before depth: depth rows say what to run
    out = ws.table("genprobe_outputs")
    assert out.num_rows == rep.processed == 12  # 2 exemplars x 3 kinds x 2 strengths x 1 seed
    errors = [r for r in out.to_pylist() if r["error"]]
    assert {r["conditioning"] for r in errors} == {"depth"} and len(errors) == 4
    assert all("run `exokiratory run depth` first" in r["error"] for r in errors)
    (first,) = ws.run(["genprobe-measures"], progress=False)
    ws.run(["depth"], progress=False)
    ws.run(["genprobe"], progress=False, retry_errors=True)
    (second,) = ws.run(["genprobe-measures"], progress=False)
    assert first.rows == 16 and not second.up_to_date and second.rows == 24  # new rows seen
    rows = ws.sql("SELECT * FROM genprobe_outputs ORDER BY gen_id").to_pylist()
    assert len(rows) == 12 and not any(r["error"] for r in rows)
    for r in rows:
        assert Image.open(io.BytesIO(r["image"])).size == (32, 32)
        assert len(r["clip_embedding"]) == 16 and len(r["dino_embedding"]) == 32
        assert r["clip_model_id"] == "tiny:clip" and r["is_random_weights"]
        assert r["model_id"] == "tiny:diffusion" and r["prompt_id"] == "genprobe_v1"
    by_kind = {r["conditioning"]: r for r in rows if r["strength"] == 0.5}
    assert by_kind["depth"]["conditioning_model_id"] == "tiny:depth"
    assert by_kind["canny"]["controlnet_id"] == "tiny:controlnet-canny"
    assert len({by_kind[k]["image"] for k in by_kind}) == 3  # the ControlNets condition
    n = {
        v: ws.sql(f"SELECT count(*) AS n FROM {v}").to_pylist()[0]["n"]
        for v in ("genprobe_stability", "genprobe_exemplars", "genprobe_holes")
    }
    assert n == {"genprobe_stability": 24, "genprobe_exemplars": 12, "genprobe_holes": 24}
    # a rerun plans nothing; regenerating from scratch gives identical rows (fixed seeds)
    (again,) = ws.run(["genprobe"], progress=False)
    assert again.processed == 0 and again.already_done == 12
    shutil.rmtree(tmp_path / "ws" / "genprobe" / "outputs")
    ws.run(["genprobe"], progress=False)
    assert table_rows(ws.table("genprobe_outputs")) == table_rows(pa.Table.from_pylist(rows))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    from .test_kill import _cli, _kill_at, _run_to_end

    src = _collection(tmp_path / "src")
    _upstream(tmp_path / "base", src)
    ws = Workspace(tmp_path / "base")
    _configure(ws, conditionings=["none"], seeds=[0, 1])  # 2 exemplars x 2 strengths x 2 seeds
    for name in ("ref", "ws"):
        shutil.copytree(tmp_path / "base", tmp_path / name)
    cmd = lambda root: _cli(root, "run", "genprobe", "--batch-size", "2")  # noqa: E731
    _run_to_end(cmd(tmp_path / "ref"))
    parts = lambda: len(list((tmp_path / "ws" / "genprobe").rglob("*.parquet")))  # noqa: E731
    killed = _kill_at(cmd(tmp_path / "ws"), random.Random(2).uniform(0.0, 0.2), parts)
    mid = parts()
    _run_to_end(cmd(tmp_path / "ws"))
    assert killed and 0 < mid < 4, mid
    got = Workspace(tmp_path / "ws").table("genprobe_outputs")
    want = Workspace(tmp_path / "ref").table("genprobe_outputs")
    assert got.num_rows == want.num_rows == 8
    assert table_rows(got) == table_rows(want)
