"""PASS 5 captioning with tiny random-weight BLIP-2, LLaVA and Florence-2 built locally and
loaded through the real ``from_pretrained`` path: the passes over the selection, the
``captions`` view with ``clip_score``, versioned prompts, bad inputs, an unloadable model,
SIGKILL then rerun, and (``real_weights``, online only) a real Florence-2."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from exokiratory import Workspace
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.dataset import PartDataset
from exokiratory.core.prompts import PromptRegistryError
from exokiratory.core.prompts.registry import REGISTRY_FILE
from exokiratory.models.cache import build_once
from exokiratory.models.captioner import hub_reachable, load_captioner
from exokiratory.models.registry import model_slug, resolve
from exokiratory.models.tiny_captioners import TINY_CAPTIONERS

from .conftest import table_rows
from .segment_data import install_segments, write_scenes

#: the selection of these tests: every image, and the object segment (mask 2) of each scene
PICK = "unit_kind = 'image' OR mask_index = 2"
TINY_CAPTION = {"model": "tiny", "max_new_tokens": 6, "segment_max_new_tokens": 4}


#: tiny checkpoints built once for the whole file (every workspace's model cache links them)
TINY: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    TINY["dir"] = tmp_path_factory.mktemp("tiny-captioners")
    return TINY["dir"]


def _share_tiny_models(ws_root: Path) -> None:
    """Link the shared tiny checkpoints into a workspace's model cache (built on first use)."""
    cache = ws_root / "cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("caption", "vlm", "florence2"):  # tiny BLIP-2, LLaVA, Florence-2
        slug = model_slug(f"tiny:{name}")
        build_once(TINY["dir"] / slug, TINY_CAPTIONERS[name])
        (cache / slug).symlink_to(TINY["dir"] / slug, target_is_directory=True)


def make_workspace(root: Path, n_scenes: int, *, embed: bool = False, **caption: Any) -> Workspace:
    scenes = write_scenes(root / "src", n_scenes)
    ws = Workspace.init(root / "ws", [str(root / "src")], run=RunConfig(batch_size=8, workers=1))
    _share_tiny_models(root / "ws")
    ws.scan()
    install_segments(ws, scenes)
    passes = ws.config.passes
    passes["caption-select"] = {"user_where": PICK, "max_units": 3 * n_scenes}
    passes["caption-factual"] = {**TINY_CAPTION, **caption}
    passes["caption-embed"] = {}  # the model of embed-clip
    if embed:
        passes["embed-clip"] = {"model": "tiny", "routed_only": False}
        passes["segment-embed-clip"] = {"model": "tiny"}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(ws.storage.url)
    if embed:
        ws.run(["embed-clip", "segment-embed-clip"], progress=False)
    return ws


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = make_workspace(tmp_path_factory.mktemp("captions"), 6, embed=True)
    reports = ws.run(["caption"], progress=False)
    assert all(r.ok for r in reports), [r.summary() for r in reports]
    return ws


# -- models ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "name", "family", "cls"),
    [
        ("caption", "tiny", "blip-2", "Blip2ForConditionalGeneration"),
        ("vlm", "tiny", "llava", "LlavaForConditionalGeneration"),
        ("caption", "tiny-florence2", "florence2", "Florence2ForConditionalGeneration"),
    ],
)
def test_tiny_captioners_load_like_checkpoints_and_batch_like_one_by_one(
    tiny_models: Path, role: str, name: str, family: str, cls: str
) -> None:
    import torch
    from PIL import Image

    cache = tiny_models
    cap = load_captioner(resolve(role, name), cache, "cpu")
    folder = cache / f"tiny-{resolve(role, name).model_id.split(':')[1]}"
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {
        p.name for p in folder.iterdir()
    }
    assert "random weights" in (folder / "README.md").read_text()
    assert cap.family == family and type(cap.model).__name__ == cls
    decoder_only = family != "florence2"
    assert cap.tokenizer.padding_side == ("left" if decoder_only else "right")
    rng = torch.Generator().manual_seed(0)
    pics = [
        Image.fromarray(torch.randint(0, 255, (40 + 9 * i, 50, 3), generator=rng).byte().numpy())
        for i in range(4)
    ]
    prompts = [
        cap.prompt_text("Describe it.", "caption"),
        cap.prompt_text("A longer one.", "dense"),
    ]
    enc = [cap.encode(p, prompts[i % 2]) for i, p in enumerate(pics)]
    batched = cap.generate(enc, 7)
    alone = [cap.generate([e], 7)[0] for e in enc]
    assert batched == alone  # padding (left for decoder-only models) changes nothing
    assert all(g.text and 0 < g.n_tokens <= 7 for g in batched)
    again = load_captioner(resolve(role, name), cache, "cpu", use_cache=False)
    assert again.generate(enc, 7) == batched  # same build, same greedy text


def test_prompt_texts_follow_the_model_family(tiny_models: Path) -> None:
    cache = tiny_models
    blip = load_captioner(resolve("caption", "tiny"), cache, "cpu")
    llava = load_captioner(resolve("vlm", "tiny"), cache, "cpu")
    florence = load_captioner(resolve("caption", "tiny-florence2"), cache, "cpu")
    assert blip.prompt_text("Describe.", "caption") == "Question: Describe. Answer:"
    assert llava.prompt_text("Describe.", "dense") == "USER: <image>\nDescribe. ASSISTANT:"
    assert florence.prompt_text("anything", "dense") == "<MORE_DETAILED_CAPTION>"


# -- the passes --------------------------------------------------------------------------------
def test_captions_of_the_selected_units_with_clip_scores(captioned: Workspace) -> None:
    ws = captioned
    sel = ws.sql("SELECT unit_id, unit_kind, priority FROM caption_selection").to_pylist()
    rows = ws.sql("SELECT * FROM captions ORDER BY unit_id").to_pylist()
    assert len(sel) == 12 and len(rows) == 12  # 6 images + 6 object segments
    n_units = ws.sql("SELECT count(*) AS n FROM segments").to_pylist()[0]["n"] + 6
    assert len({r["unit_id"] for r in rows}) < n_units  # fewer captioned than exist
    assert {r["unit_id"] for r in rows} <= {s["unit_id"] for s in sel}
    for r in rows:
        assert r["error"] is None and r["text"] and 0 < r["n_tokens"] <= 6
        assert r["model_id"] == "tiny:caption" and r["is_random_weights"] is True
        assert r["caption_pass"] == "factual"
        want = ("caption_v1", "caption") if r["unit_kind"] == "image" else ("segment_v1", "segment")
        assert (r["prompt_id"], r["task"], r["prompt_version"]) == (*want, "1")
        assert '"do_sample": false' in r["generation_params"]
        assert r["clip_score"] is not None and -1.0 <= r["clip_score"] <= 1.0
        if r["unit_kind"] == "segment":
            assert r["segment_id"] == r["unit_id"] and r["mask_index"] == 2
    emb = ws.sql("SELECT caption_id, embedding, model_id FROM caption_embeddings").to_pylist()
    assert {e["caption_id"] for e in emb} == {r["caption_id"] for r in rows}
    assert all(e["model_id"] == "tiny:clip" and len(e["embedding"]) == 16 for e in emb)
    # the red disks (identical masked crops) get identical captions
    disks = {
        r["text"] for r in rows if r["unit_kind"] == "segment" and int(r["image_idx"]) % 2 == 0
    }
    assert len(disks) == 1
    assert [r.planned for r in ws.run(["caption"], progress=False)[1:]] == [0, 0]  # type: ignore[union-attr]


def test_status_and_registry_record_say_random_weight(captioned: Workspace) -> None:
    from exokiratory.passes.captions.summary import summary_lines

    st = captioned.status()
    factual = next(p for p in st.passes if p.name == "caption-factual")
    assert (factual.wanted, factual.done, factual.failed) == (12, 12, 0)
    assert st.captions["selected"] == 12 and st.captions["selected_by_kind"] == {
        "image": 6,
        "segment": 6,
    }
    lines = summary_lines(st.captions)
    assert lines[0].startswith("captions: 12 units selected")
    assert all("RANDOM-WEIGHT" in line for line in lines[1:]) and len(lines) == 3
    record = (Path(captioned.storage.root) / "prompts" / "prompt_versions.json").read_text()
    assert "caption_v1@1" in record and "segment_v1@1" in record


def test_report_shows_captions_scores_and_the_lowest_scoring(captioned: Workspace) -> None:
    result = captioned.report("captions", sample=20, progress=False)
    html = Path(str(result.local_path)).read_text()
    section = html[html.index("id='captions'") :]
    assert "clip_score" in section and "RANDOM-WEIGHT" in section
    assert "Lowest-scoring captions" in section  # (no clusters here: no cluster sheet)
    lowest = section[section.index("Lowest-scoring captions") :]
    assert lowest.count("<figure class='tile") == 12  # every caption (gallery_size >= 12)


def test_limit_captions_in_priority_order_and_dense_and_florence_passes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, 3)
    ws.config.passes["caption-dense"] = {"model": "tiny", "max_new_tokens": 5}
    ws.config.passes["caption-factual"]["model"] = "tiny-florence2"
    reports = ws.run(["caption-select", "caption-factual"], limit=2, progress=False)
    first = ws.sql("SELECT unit_id FROM caption_selection WHERE priority <= 2").to_pylist()
    done = ws.sql("SELECT unit_id, model_id FROM captions_factual").to_pylist()
    assert sorted(d["unit_id"] for d in done) == sorted(f["unit_id"] for f in first)
    assert {d["model_id"] for d in done} == {"tiny:florence2"} and reports[-1].processed == 2  # type: ignore[union-attr]
    (dense,) = ws.run(["caption-dense"], progress=False)
    assert dense.processed == 3  # type: ignore[union-attr]  # images only by default
    rows = ws.sql("SELECT unit_kind, prompt_id, model_id, text FROM captions_dense").to_pylist()
    assert {(r["unit_kind"], r["prompt_id"], r["model_id"]) for r in rows} == {
        ("image", "dense_v1", "tiny:vlm")
    }


def test_an_undecodable_unit_is_an_error_row(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, 3)
    ws.run(["caption-select"], progress=False)
    broken = sorted((tmp_path / "src").glob("*.png"))[1]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not any more")
    (rep,) = ws.run(["caption-factual"], progress=False)
    assert rep.processed == 6 and rep.unit_errors == 2  # type: ignore[union-attr]
    errors = ws.sql("SELECT unit_kind, error FROM captions_factual WHERE error IS NOT NULL")
    assert sorted(errors.column("unit_kind").to_pylist()) == ["image", "segment"]


def test_an_unloadable_model_fails_the_pass_once_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{ this is not json")
    ws = make_workspace(tmp_path, 3, model=str(bad))
    ws.config.passes["caption-select"]["max_units"] = 6
    (_, rep) = ws.run(["caption-select", "caption-factual"], batch_size=2, progress=False)
    assert rep.batches_failed == 1 and rep.processed == 0  # type: ignore[union-attr]
    (line,) = rep.failures
    assert "cannot load captioner" in line and "not-a-model" in line and "\n" not in line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id, offline: fails at once
    ws.config.passes["caption-factual"]["model"] = "someone/no-such-captioner"
    t0 = time.monotonic()
    (rep,) = ws.run(["caption-factual"], batch_size=2, progress=False)
    assert rep.batches_failed == 1 and time.monotonic() - t0 < 30  # type: ignore[union-attr]
    assert "no-such-captioner" in rep.failures[0]


def test_prompt_edits_need_a_new_version(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, 2)
    ws.run(["caption-select", "caption-factual"], progress=False)
    registry = Path(ws.storage.root) / REGISTRY_FILE
    original = registry.read_text()
    old = "text: Describe the image factually without interpretation."
    registry.write_text(original.replace(old, "text: Describe the image poetically."))
    with pytest.raises(PromptRegistryError) as err:
        ws.run(["caption-factual"], progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(registry) in msg
    assert "caption_prompts[caption_v1].text" in msg and "without bumping its version" in msg
    st = ws.status()  # status still works, and says why the pass cannot run
    (factual,) = [p for p in st.passes if p.name == "caption-factual"]
    assert "without bumping" in factual.recent_errors[0][1]
    bumped = original.replace(old, "text: Describe the image poetically.").replace(
        'id: caption_v1\n    version: "1"', 'id: caption_v1\n    version: "2"'
    )
    registry.write_text(bumped)
    (rep,) = ws.run(["caption-factual"], progress=False)
    assert rep.processed == 2  # type: ignore[union-attr]  # the images again, the segments not
    versions = ws.sql(
        "SELECT prompt_version, count(*) AS n FROM captions_factual WHERE unit_kind = 'image' "
        "GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert versions == [{"prompt_version": "1", "n": 2}, {"prompt_version": "2", "n": 2}]


def test_an_invalid_prompt_registry_names_file_key_and_problem(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, 1)
    registry = Path(ws.storage.root) / REGISTRY_FILE
    registry.write_text(registry.read_text().replace("task: dense", "task: poetry"))
    with pytest.raises(PromptRegistryError) as err:
        ws.run(["caption-select", "caption-factual"], progress=False)
    msg = str(err.value)
    assert str(registry) in msg and "caption_prompts[dense_v1].task" in msg
    assert "'caption', 'dense' or 'segment'" in msg


# -- SIGKILL -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_during_generation_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    from .test_kill import _cli, _kill_at, _run_to_end

    def workspace(name: str) -> Workspace:
        ws = make_workspace(tmp_path / name, 16, max_new_tokens=24, segment_max_new_tokens=24)
        ws.run(["caption-select"], progress=False)
        return ws

    ref, ws = workspace("ref"), workspace("ws")
    ref.run(["caption-factual"], batch_size=4, progress=False)  # uninterrupted, in process
    (p,) = ws.passes(["caption-factual"])
    ds = PartDataset(ws.storage, p.output_rel, p.key)  # type: ignore[attr-defined]
    cmd = _cli(tmp_path / "ws" / "ws", "run", "caption-factual", "--batch-size", "4")
    rng = random.Random(11)
    states = []
    for _ in range(2):  # a random instant after the next batch commits: mid-generation
        killed = _kill_at(cmd, rng.uniform(0.0, 0.5), lambda: len(ds.parts()))
        states.append((killed, len(ds.parts())))
    _run_to_end(cmd)
    assert any(k and n > 0 for k, n in states), states  # really killed mid-work
    got, want = ws.table("captions_factual"), ref.table("captions_factual")
    assert got.num_rows == 32
    assert table_rows(got) == table_rows(want)
    raw = ds.read_raw(["unit_id"])
    assert len(set(raw.column("unit_id").to_pylist())) == raw.num_rows  # no duplicates


# -- real weights ------------------------------------------------------------------------------
@pytest.mark.real_weights
def test_real_florence2_captions_a_photo(tmp_path: Path) -> None:
    if not hub_reachable("florence-community/Florence-2-base"):
        pytest.skip("Hugging Face hub not reachable (offline)")
    from PIL import Image

    from .conftest import skimage_data_dir

    cap = load_captioner(resolve("caption", "lite"), tmp_path, "cpu", use_cache=False)
    photo = Image.open(skimage_data_dir() / "coffee.png").convert("RGB")
    (out,) = cap.generate([cap.encode(photo, cap.prompt_text("", "caption"))], 20)
    assert "cup" in out.text.lower() or "coffee" in out.text.lower()
