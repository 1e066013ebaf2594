"""Prompt registry validation and the ``zeroshot`` derivation (tiny random-weight CLIP: plumbing)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from exokiratory import Workspace
from exokiratory.core.config import render_config
from exokiratory.core.prompts import (
    REGISTRY_FILE,
    PromptRegistryError,
    default_registry_text,
    load_registry,
    parse_registry,
)

from .conftest import NATURAL_PHOTOS, skimage_data_dir

GOOD = """
prompt_sets:
  - id: s
    version: "2"
    groups:
      - id: g
        version: "1"
        templates: ["a photo of {}", "{}"]
        classes:
          - {id: cat, prompts: [a cat, a kitten]}
          - {id: dog, prompts: [a dog]}
"""


def test_default_registry_is_valid_and_names_the_flag_classes() -> None:
    reg = parse_registry(default_registry_text())
    s = reg.get("semantic-flags")
    wanted = {
        "modality": {"photo", "scan", "graphic"},
        "human": {"person"},
        "density": {"dense"},
        "text": {"text_heavy"},
    }
    for group, classes in wanted.items():
        g = s.group(group)
        assert g is not None and classes <= {c.id for c in g.classes}
        assert all(len(g.texts(c)) >= 3 for c in g.classes)  # several prompts per class


def test_texts_are_templates_times_prompts() -> None:
    g = parse_registry(GOOD).get("s").groups[0]
    assert g.texts(g.classes[0]) == ["a photo of a cat", "a cat", "a photo of a kitten", "a kitten"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prompt_sets: [", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        (
            GOOD.replace("{id: dog", "{id: cat"),
            "prompt_sets[s].groups[g].classes: class ids must be unique",
        ),
        (GOOD.replace('"a photo of {}"', '"a photo of"'), "must hold '{}' exactly once"),
        (
            GOOD.replace('version: "2"', "version: two words"),
            "prompt_sets[s].version: String should match",
        ),
        (GOOD.replace("id: g", "id: G!"), "groups[G!].id: String should match"),
        (GOOD.replace("[a dog]", "[]"), "classes[dog].prompts: List should have at least 1 item"),
        (GOOD.replace("[a dog]", '["a {} dog"]'), "placeholders belong in templates"),
        (
            GOOD.replace("templates:", "colour: red\n        templates:"),
            "groups[g].colour: unknown key",
        ),
        (GOOD + GOOD.split("prompt_sets:\n")[1], "prompt set ids must be unique"),
    ],
)
def test_registry_errors_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(PromptRegistryError) as err:
        parse_registry(text, "reg.yaml")
    assert str(err.value).startswith("reg.yaml: ")
    assert expected in str(err.value)


def test_unknown_prompt_set_names_the_known_ones() -> None:
    with pytest.raises(PromptRegistryError, match="no prompt set 'x'; known: s"):
        parse_registry(GOOD).get("x")


def test_version_changes_with_any_edit() -> None:
    a = parse_registry(GOOD).get("s")
    b = parse_registry(GOOD.replace("a kitten", "a small cat")).get("s")
    c = parse_registry(GOOD.replace("a kitten", "a kitten")).get("s")
    assert a.version == b.version == "2"
    assert a.full_version != b.full_version and a.full_version == c.full_version
    assert a.full_version.startswith("2+") and len(a.digest) == 64


def test_init_writes_the_registry_and_never_overwrites_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    path = tmp_path / "ws" / REGISTRY_FILE
    assert path.read_text() == default_registry_text()
    path.write_text(GOOD)
    Workspace.init(tmp_path / "ws", [str(tmp_path)], exist_ok=True)
    assert load_registry(ws.storage).get("s").version == "2"
    path.unlink()  # first use writes it again
    assert load_registry(ws.storage).get("semantic-flags")


def test_class_vectors_softmax_per_group() -> None:
    from exokiratory.passes.zeroshot.step import ClassVectors

    pset = parse_registry(
        GOOD.replace(
            "          - {id: dog, prompts: [a dog]}",
            "          - {id: dog, prompts: [a dog]}\n"
            "      - id: h\n        version: '1'\n        classes:\n"
            "          - {id: x, prompts: [x]}\n          - {id: y, prompts: [y]}\n"
            "          - {id: z, prompts: [z]}",
        )
    ).get("s")
    rng = np.random.default_rng(0)
    table = {}

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            if t not in table:
                v = rng.normal(size=8)
                table[t] = v / np.linalg.norm(v)
            out.append(table[t])
        return np.asarray(out)

    cv = ClassVectors(pset, embed)
    assert cv.matrix.shape == (5, 8) and cv.spans == [(0, 2), (2, 5)]
    assert np.allclose(np.linalg.norm(cv.matrix, axis=1), 1)
    cat = np.mean([table[t] for t in pset.groups[0].texts(pset.groups[0].classes[0])], axis=0)
    assert np.allclose(cv.matrix[0], cat / np.linalg.norm(cat), atol=1e-6)
    x = rng.normal(size=(4, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, probs = cv.score(x, 100.0)
    assert np.allclose(sims, x @ cv.matrix.T, atol=1e-5)
    assert np.allclose(probs[:, :2].sum(1), 1) and np.allclose(probs[:, 2:].sum(1), 1)
    e = np.exp(100 * (sims[:, 2:] - sims[:, 2:].max(1, keepdims=True)))
    assert np.allclose(probs[:, 2:], e / e.sum(1, keepdims=True), atol=1e-5)


pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("zeroshot")
    src = root / "src"
    src.mkdir()
    for name in NATURAL_PHOTOS[:3]:
        shutil.copy(skimage_data_dir() / name, src / name)
    w = Workspace.init(root / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": "tiny", "routed_only": False}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(root / "ws")
    w.scan()
    w.run(["sense", "flags", "embed-clip", "zeroshot"], workers=1)
    return w


def test_zeroshot_rows_and_probabilities(ws: Workspace) -> None:
    pset = load_registry(ws.storage).get("semantic-flags")
    n_classes = sum(len(g.classes) for g in pset.groups)
    rows = ws.sql("SELECT * FROM zeroshot").to_pylist()
    assert len(rows) == 3 * n_classes
    sums = ws.sql(
        "SELECT image_id, group_id, sum(prob) AS s, count(*) AS k FROM zeroshot GROUP BY ALL"
    ).to_pylist()
    assert len(sums) == 3 * len(pset.groups)
    assert all(abs(r["s"] - 1) < 1e-5 for r in sums)
    assert {(r["prompt_set_id"], r["prompt_set_version"], r["model_id"]) for r in rows} == {
        ("semantic-flags", pset.full_version, "tiny:clip")
    }
    assert all(-1.0 <= r["similarity"] <= 1.0 for r in rows)
    # the tiny model's probabilities never reach the flags
    ws.run(["flags"])
    assert {r["semantic_inputs"] for r in ws.sql("SELECT * FROM flags").to_pylist()} == {"pass1"}


def test_edited_prompt_rederives_with_a_new_version(ws: Workspace) -> None:
    (rep,) = ws.run(["zeroshot"])
    assert rep.up_to_date  # type: ignore[union-attr]
    old = ws.sql("SELECT DISTINCT prompt_set_version AS v FROM zeroshot").to_pylist()
    path = ws.storage.path(REGISTRY_FILE)
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("- a snapshot", "- a holiday snapshot"))
    (rep,) = ws.run(["zeroshot"])
    assert not rep.up_to_date and rep.rows > 0  # type: ignore[union-attr]
    new = ws.sql("SELECT DISTINCT prompt_set_version AS v FROM zeroshot").to_pylist()
    assert len(new) == 1 and new != old and new[0]["v"].startswith("1+")
    assert ws.run(["zeroshot"])[0].up_to_date  # type: ignore[union-attr]
    with open(path, "w") as fh:
        fh.write(text.replace("id: photo", "id: photo\n            colour: red"))
    with pytest.raises(PromptRegistryError, match=r"classes\[photo\]\.colour: unknown key"):
        ws.run(["zeroshot"])
    assert any(d.name == "zeroshot" for d in ws.status().derived)  # status still works
    with open(path, "w") as fh:
        fh.write(text)


def test_zeroshot_in_run_all_only_with_embed_clip(ws: Workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "zeroshot" in [p.name for p in ws.passes(["all"])]
    bare = Workspace.init(tmp_path / "bare", [str(tmp_path)])
    assert "zeroshot" not in [p.name for p in bare.passes(["all"])]
