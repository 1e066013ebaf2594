"""Tests for the model layer: registry, device helpers, tiny checkpoints and embedders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exokiratory.models.registry import PROFILES, ModelSpec, model_slug, resolve

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from exokiratory.models import device, tiny, vision  # noqa: E402


def _photos() -> list[Image.Image]:
    """Three real photos of different sizes and aspect ratios."""
    return [
        Image.fromarray(skdata.astronaut()),
        Image.fromarray(skdata.coffee()),
        Image.fromarray(skdata.chelsea()),
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace-like model cache shared by the module (tiny models build once)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def clip(cache_dir: Path) -> vision.ClipEmbedder:
    emb = vision.load_embedder(resolve("clip", "tiny"), cache_dir, device="cpu")
    assert isinstance(emb, vision.ClipEmbedder)
    return emb


@pytest.fixture(scope="module")
def dino(cache_dir: Path) -> vision.ImageEmbedder:
    return vision.load_embedder(resolve("dino", "tiny"), cache_dir, device="cpu")


# --- registry ---------------------------------------------------------------------------------


def test_resolve_profiles() -> None:
    for profile, ids in PROFILES.items():
        for role in ("clip", "dino"):
            spec = resolve(role, profile)
            assert spec == ModelSpec(role, ids[role], None, role)
    tiny_spec = resolve("dino", "tiny")
    assert tiny_spec.is_tiny and tiny_spec.space == "dino"
    assert model_slug(tiny_spec.model_id) == "tiny-dino"


def test_resolve_hub_ids_and_revisions() -> None:
    spec = resolve("clip", "openai/clip-vit-base-patch32")
    assert spec.model_id == "openai/clip-vit-base-patch32" and spec.revision is None
    pinned = resolve("dino", "facebook/dinov2-small@abc123")
    assert (pinned.model_id, pinned.revision) == ("facebook/dinov2-small", "abc123")
    assert not pinned.is_local


def test_resolve_local_dir(tmp_path: Path) -> None:
    folder = tmp_path / "my-ckpt"
    folder.mkdir()
    spec = resolve("clip", str(folder))
    assert spec.is_local and spec.model_id == str(folder.resolve())
    slug = model_slug(spec.model_id)
    assert slug.startswith("my-ckpt-") and len(slug) == len("my-ckpt-") + 8
    other = tmp_path / "x" / "my-ckpt"
    other.mkdir(parents=True)
    assert model_slug(str(other)) != slug


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model role"):
        resolve("siglip", "lite")
    with pytest.raises(ValueError, match="does not exist"):
        resolve("clip", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a profile"):
        resolve("clip", "not a model!")
    with pytest.raises(ValueError, match="empty"):
        resolve("clip", "  ")
    with pytest.raises(ValueError, match="not a profile"):
        resolve("clip", "org/name@")


def test_model_slug_hub_id() -> None:
    assert model_slug("openai/clip-vit-large-patch14") == "openai-clip-vit-large-patch14"
    assert model_slug("facebook/dinov2-small") == "facebook-dinov2-small"


def test_core_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import exokiratory, exokiratory.models, exokiratory.models.registry\n"
        "from exokiratory.models import resolve, model_slug\n"
        "assert resolve('clip', 'lite').model_id == 'openai/clip-vit-base-patch32'\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- device -----------------------------------------------------------------------------------


def test_pick_device_and_dtype() -> None:
    assert device.pick_device("cpu") == "cpu"
    assert device.pick_device("auto") in {"cpu", "cuda"}
    assert device.pick_dtype("cpu") == torch.float32
    assert device.pick_dtype("cuda") == torch.float16
    with pytest.raises(ValueError):
        device.pick_device("tpu")
    device.release_memory()


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the backoff's memory releases instead of running them: a full ``gc.collect()`` in a
    worker that has loaded many models takes seconds (``release_memory`` itself runs above)."""
    calls: list[int] = []
    monkeypatch.setattr(device, "release_memory", lambda: calls.append(1))
    return calls


def test_oom_backoff_halves(releases: list[int]) -> None:
    seen: list[int] = []

    def fn(chunk: list[int]) -> list[int]:
        seen.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return [x * 2 for x in chunk]

    out = device.run_with_oom_backoff(fn, list(range(10)), batch_size=16)
    assert out == [x * 2 for x in range(10)]
    assert seen[:3] == [10, 8, 4]  # 16 -> 8 -> 4 -> 2, then stays at 2
    assert set(seen[3:]) == {2}
    assert len(releases) == 3  # memory released before each of the 3 retries


def test_oom_backoff_gives_up_at_one(releases: list[int]) -> None:
    def fn(chunk: list[int]) -> list[int]:
        raise torch.cuda.OutOfMemoryError("always")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        device.run_with_oom_backoff(fn, [1, 2, 3], batch_size=4)
    assert len(releases) == 2  # 4 -> 2 -> 1, then the error itself


def test_oom_backoff_other_errors_propagate() -> None:
    def fn(chunk: list[int]) -> list[int]:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        device.run_with_oom_backoff(fn, [1, 2], batch_size=2)
    with pytest.raises(ValueError):
        device.run_with_oom_backoff(lambda c: [], [1], batch_size=1)
    with pytest.raises(ValueError):
        device.run_with_oom_backoff(lambda c: c, [1], batch_size=0)


# --- tiny checkpoints and embedders -------------------------------------------------------------


def test_tiny_folders(
    clip: vision.ClipEmbedder, dino: vision.ImageEmbedder, cache_dir: Path
) -> None:
    for name in ("tiny-clip", "tiny-dino"):
        folder = cache_dir / name
        assert "random weights" in (folder / "README.md").read_text()
        assert (folder / "preprocessor_config.json").is_file()
    assert (cache_dir / "tiny-clip" / "vocab.json").is_file()
    assert clip.image_size == dino.image_size == 224
    assert dino.preprocessing.resize == 256 and clip.preprocessing.resize == 224


@pytest.mark.parametrize("role", ["clip", "dino"])
def test_embed_photos(role: str, clip: vision.ClipEmbedder, dino: vision.ImageEmbedder) -> None:
    emb = clip if role == "clip" else dino
    pixels = np.stack([emb.preprocess(img) for img in _photos()])
    assert pixels.shape == (3, 3, 224, 224) and pixels.dtype == np.float32
    vecs = emb.embed_pixels(pixels)
    assert vecs.shape == (3, emb.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([emb.embed_pixels(pixels[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(vecs, one_by_one, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])
    assert emb.embed_pixels(pixels[:0]).shape == (0, emb.dim)


@pytest.mark.parametrize("role", ["clip", "dino"])
def test_deterministic_across_loads(role: str, tmp_path: Path) -> None:
    pixels = np.stack([vision.preprocess_image(img, _prep(role)) for img in _photos()[:2]])
    runs = []
    for sub in ("a", "b"):
        spec = resolve(role, "tiny")
        emb = vision.load_embedder(spec, tmp_path / sub, device="cpu", use_cache=False)
        runs.append(emb.embed_pixels(pixels))
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


def _prep(role: str) -> vision.Preprocessing:
    side = 224 if role == "clip" else 256
    mean = tiny.CLIP_MEAN if role == "clip" else tiny.IMAGENET_MEAN
    std = tiny.CLIP_STD if role == "clip" else tiny.IMAGENET_STD
    return vision.Preprocessing.from_config(
        {"size": {"shortest_edge": side}, "crop_size": 224, "image_mean": mean, "image_std": std}
    )


def test_local_dir_loads_like_hub(
    tmp_path: Path, cache_dir: Path, clip: vision.ClipEmbedder
) -> None:
    folder = tiny.build_tiny_clip(tmp_path / "ckpt")
    spec = resolve("clip", str(folder))
    emb = vision.load_embedder(spec, cache_dir, device="cpu")
    img = _photos()[2]
    np.testing.assert_allclose(emb.embed_images([img]), clip.embed_images([img]), atol=1e-6)


def test_embedder_cache_reuses(cache_dir: Path, clip: vision.ClipEmbedder) -> None:
    again = vision.load_embedder(resolve("clip", "tiny"), cache_dir, device="cpu")
    assert again is clip


def test_text_embedding(clip: vision.ClipEmbedder) -> None:
    texts = ["a photo of a cat", "a dog", "the person with a cup", "zzz 42 !!"]
    vecs = clip.embed_texts(texts)
    assert vecs.shape == (4, clip.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clip.embed_texts(texts[:1]), vecs[:1], atol=1e-5)
    images = clip.embed_images(_photos()[:1])
    assert images.shape[1] == vecs.shape[1]
    assert clip.embed_texts([]).shape == (0, clip.dim)


def test_preprocess_matches_reference_math() -> None:
    img = Image.fromarray(skdata.coffee())  # 600 x 400 (w x h)
    prep = _prep("dino")
    out = vision.preprocess_image(img, prep)
    resized = img.resize((384, 256), Image.Resampling.BICUBIC)
    crop = np.asarray(resized.crop((80, 16, 304, 240)), dtype=np.float32) / 255.0
    ref = ((crop - np.array(tiny.IMAGENET_MEAN)) / np.array(tiny.IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.real_weights
def test_real_clip_weights(tmp_path: Path) -> None:
    if not _hub_reachable():
        pytest.skip("Hugging Face hub not reachable (offline)")
    emb = vision.load_embedder(
        resolve("clip", "openai/clip-vit-base-patch32"), tmp_path, device="cpu", use_cache=False
    )
    assert isinstance(emb, vision.ClipEmbedder) and emb.dim == 512
    images = emb.embed_images(_photos())
    texts = emb.embed_texts(["a photo of an astronaut", "a cup of coffee", "a photo of a cat"])
    assert (images @ texts.T).argmax(axis=1).tolist() == [0, 1, 2]
