"""Which model backs each embedding role: profiles, hub ids and local directories.

This module is deliberately free of torch (and of transformers) so that the core of exokiratory
can name, hash and plan models on machines that cannot run them.

Roles:

* ``"clip"``: a CLIP model; its image embeddings live in the CLIP space shared with text.
* ``"dino"``: a DINOv2 backbone; its image embeddings (CLS token) live in the DINO space.
* ``"sam"``: a Segment Anything model (SAM ViT-H/L/B or SAM 2 Hiera) for promptable masks.
* ``"depth"``: a monocular relative-depth model (Depth Anything V2, ``depth_anything`` in
  transformers). Only the Small checkpoint is Apache-2.0; Base and Large are CC-BY-NC-4.0
  (non-commercial): the ``base`` / ``large`` profiles say so in :data:`LICENSES`.
* ``"detect"``: an open-vocabulary detector (OWLv2, ``owlv2`` in transformers; Apache-2.0).
* ``"caption"``: an image-to-text model for short factual captions (PASS 5; BLIP-2 by default,
  Florence-2 in ``lite``).
* ``"vlm"``: a vision-language chat model for dense captions (PASS 5; LLaVA-1.5 by default,
  SmolVLM in ``lite``). Captioner licences are in :data:`LICENSES` too.
* ``"diffusion"``: a Stable Diffusion 1.x pipeline folder for img2img (PASS 8 generative
  probing; SD 1.5, CreativeML OpenRAIL-M); ``"controlnet-depth"`` / ``"controlnet-canny"``: the
  ControlNets conditioning it on a depth map / Canny edges (ControlNet v1.1, OpenRAIL).

Names accepted by :func:`resolve`:

* a profile name from :data:`PROFILES` (``"full"``, ``"lite"``) or :data:`TINY_PROFILE`;
* a role-specific profile from :data:`ROLE_PROFILES` (``sam``: ``"large"``, ``"sam2"``...);
* a Hugging Face hub id (``"org/name"``), optionally pinned as ``"org/name@revision"``;
* a local directory holding a checkpoint saved with ``save_pretrained``.

The ``"tiny"`` profile means random-weight models of the real architectures, built locally by
:mod:`exokiratory.models.tiny` into the cache directory. They exercise the full loading and
embedding plumbing offline and deterministically; their outputs are plumbing, never meaning.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROLES: Final[tuple[str, ...]] = (
    "clip",
    "dino",
    "sam",
    "depth",
    "detect",
    "caption",
    "vlm",
    "diffusion",
    "controlnet-depth",
    "controlnet-canny",
)
"""Roles a model can fill."""

PROFILES: Final[dict[str, dict[str, str]]] = {
    "full": {
        "clip": "openai/clip-vit-large-patch14",
        "dino": "facebook/dinov2-large",
        "sam": "facebook/sam-vit-huge",
        "depth": "depth-anything/Depth-Anything-V2-Small-hf",
        "detect": "google/owlv2-base-patch16-ensemble",
        "caption": "Salesforce/blip2-opt-2.7b",
        "vlm": "llava-hf/llava-1.5-7b-hf",
        "diffusion": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "controlnet-depth": "lllyasviel/control_v11f1p_sd15_depth",
        "controlnet-canny": "lllyasviel/control_v11p_sd15_canny",
    },
    "lite": {
        "clip": "openai/clip-vit-base-patch32",
        "dino": "facebook/dinov2-small",
        "sam": "facebook/sam-vit-base",
        "depth": "depth-anything/Depth-Anything-V2-Small-hf",
        "detect": "google/owlv2-base-patch16-ensemble",
        "caption": "florence-community/Florence-2-base",
        "vlm": "HuggingFaceTB/SmolVLM-500M-Instruct",
        "diffusion": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "controlnet-depth": "lllyasviel/control_v11f1p_sd15_depth",
        "controlnet-canny": "lllyasviel/control_v11p_sd15_canny",
    },
}
"""Named sets of real hub checkpoints, one per role."""

ROLE_PROFILES: Final[dict[str, dict[str, str]]] = {
    "sam": {
        "huge": "facebook/sam-vit-huge",
        "large": "facebook/sam-vit-large",
        "base": "facebook/sam-vit-base",
        "sam2": "facebook/sam2.1-hiera-large",
        "sam2-base": "facebook/sam2.1-hiera-base-plus",
        "sam2-small": "facebook/sam2.1-hiera-small",
        "sam2-tiny": "facebook/sam2.1-hiera-tiny",
    },
    "depth": {
        "small": "depth-anything/Depth-Anything-V2-Small-hf",
        "base": "depth-anything/Depth-Anything-V2-Base-hf",
        "large": "depth-anything/Depth-Anything-V2-Large-hf",
    },
    "detect": {
        "owlv2-base": "google/owlv2-base-patch16-ensemble",
        "owlv2-large": "google/owlv2-large-patch14-ensemble",
    },
    "caption": {
        "blip2": "Salesforce/blip2-opt-2.7b",
        "blip2-flan": "Salesforce/blip2-flan-t5-xl",
        "florence2": "florence-community/Florence-2-base",
        "florence2-large": "florence-community/Florence-2-large",
        "smolvlm": "HuggingFaceTB/SmolVLM-256M-Instruct",
        "tiny-blip2": "tiny:blip2",
        "tiny-florence2": "tiny:florence2",
    },
    "vlm": {
        "llava": "llava-hf/llava-1.5-7b-hf",
        "llava-13b": "llava-hf/llava-1.5-13b-hf",
        "llava-onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "llava-onevision-small": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
        "qwen2.5-vl-small": "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen3-vl": "Qwen/Qwen3-VL-8B-Instruct",
        "smolvlm": "HuggingFaceTB/SmolVLM-500M-Instruct",
        "smolvlm2": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "tiny-llava": "tiny:llava",
        "tiny-florence2": "tiny:florence2",
    },
}
"""Extra profile names that only make sense for one role."""

LICENSES: Final[dict[str, str]] = {
    "depth-anything/Depth-Anything-V2-Small-hf": "Apache-2.0",
    "depth-anything/Depth-Anything-V2-Base-hf": "CC-BY-NC-4.0 (non-commercial use only)",
    "depth-anything/Depth-Anything-V2-Large-hf": "CC-BY-NC-4.0 (non-commercial use only)",
    "google/owlv2-base-patch16-ensemble": "Apache-2.0",
    "google/owlv2-large-patch14-ensemble": "Apache-2.0",
    # captioners and VLMs (PASS 5), as their model cards state them
    "Salesforce/blip2-opt-2.7b": "MIT (model card); its OPT-2.7B decoder comes from Meta's OPT "
    "release (OPT licence: research, non-commercial)",
    "Salesforce/blip2-flan-t5-xl": "MIT (model card); Flan-T5 is Apache-2.0",
    "llava-hf/llava-1.5-7b-hf": "Llama 2 Community Licence (Vicuna-7B v1.5 base)",
    "llava-hf/llava-1.5-13b-hf": "Llama 2 Community Licence (Vicuna-13B v1.5 base)",
    "florence-community/Florence-2-base": "MIT",
    "florence-community/Florence-2-large": "MIT",
    "HuggingFaceTB/SmolVLM-256M-Instruct": "Apache-2.0",
    "HuggingFaceTB/SmolVLM-500M-Instruct": "Apache-2.0",
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": "Apache-2.0",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "Apache-2.0",
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": "Apache-2.0",
    "Qwen/Qwen2.5-VL-7B-Instruct": "Apache-2.0",
    "Qwen/Qwen2.5-VL-3B-Instruct": "Qwen Research Licence (non-commercial)",
    "Qwen/Qwen3-VL-8B-Instruct": "Apache-2.0",
    # generative probing (PASS 8)
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "CreativeML OpenRAIL-M (use restrictions)",
    "lllyasviel/control_v11f1p_sd15_depth": "OpenRAIL (ControlNet v1.1)",
    "lllyasviel/control_v11p_sd15_canny": "OpenRAIL (ControlNet v1.1)",
}
"""Licences of the depth and detection checkpoints the profiles name (read the model card of
any other checkpoint yourself). Both depth and detection profiles default to Apache-2.0 ones."""

TINY_PROFILE: Final[str] = "tiny"
"""Profile of random-weight models built locally (outputs are plumbing, never meaning)."""

TINY_PREFIX: Final[str] = "tiny:"
"""Prefix of the ``model_id`` of a tiny-profile spec (``"tiny:clip"``, ``"tiny:dino"``)."""

#: a hub id names its owner (``org/name``): a bare word is a mistyped profile, not a model
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


@dataclass(frozen=True)
class ModelSpec:
    """An embedding model, named precisely enough to load and to record in provenance.

    Attributes:
        role: ``"clip"`` or ``"dino"``; decides the architecture class used to load it.
        model_id: a hub id, an absolute local directory, or ``"tiny:<role>"``.
        revision: hub revision (branch, tag or commit) or ``None`` for the default.
        space: the embedding space its vectors live in (``"clip"`` or ``"dino"``).
    """

    role: str
    model_id: str
    revision: str | None
    space: str

    @property
    def is_tiny(self) -> bool:
        """Whether this spec names a locally built random-weight model."""
        return self.model_id.startswith(TINY_PREFIX)

    @property
    def is_local(self) -> bool:
        """Whether ``model_id`` is a local directory (tiny models are not, until built)."""
        return not self.is_tiny and Path(self.model_id).is_absolute()


def check_role(role: str) -> str:
    """Return ``role`` if it is known, else raise a ``ValueError`` naming the valid roles."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def resolve(role: str, name: str) -> ModelSpec:
    """Turn a profile name, hub id or local directory into a :class:`ModelSpec` for ``role``.

    Raises:
        ValueError: for an unknown role, an empty name, a path-like name that is not an
            existing directory, or a name that is neither a profile, a directory nor a hub id.
    """
    check_role(role)
    name = name.strip()
    if not name:
        raise ValueError(f"empty model name for role {role!r}")
    if name == TINY_PROFILE:
        return ModelSpec(role=role, model_id=f"{TINY_PREFIX}{role}", revision=None, space=role)
    if name in PROFILES:
        return ModelSpec(role=role, model_id=PROFILES[name][role], revision=None, space=role)
    if name in ROLE_PROFILES.get(role, {}):
        return ModelSpec(role, ROLE_PROFILES[role][name], revision=None, space=role)
    local = _as_local_dir(name)
    if local is not None:
        return ModelSpec(role=role, model_id=str(local), revision=None, space=role)
    return _resolve_hub_id(role, name)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be meant as a filesystem path."""
    return name.startswith(("/", ".", "~", "\\")) or name.count("/") > 1 or "\\" in name


def _as_local_dir(name: str) -> Path | None:
    """Return the absolute directory ``name`` points at, ``None`` if it is not a path."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if _looks_like_path(name):
        raise ValueError(f"model directory {name!r} does not exist")
    return None


def _resolve_hub_id(role: str, name: str) -> ModelSpec:
    """Parse ``org/name[@revision]`` into a spec, or raise ``ValueError``."""
    model_id, sep, revision = name.partition("@")
    if not _HUB_ID.match(model_id) or (sep and not revision):
        known = ", ".join(dict.fromkeys([*PROFILES, *ROLE_PROFILES.get(role, {}), TINY_PROFILE]))
        raise ValueError(
            f"model name {name!r} is not a profile ({known}), an existing directory, "
            "or a hub id like 'org/name[@revision]'"
        )
    return ModelSpec(role=role, model_id=model_id, revision=revision or None, space=role)


def model_slug(model_id: str) -> str:
    """A filesystem-safe folder name for ``model_id``.

    Hub ids map readably (``openai/clip-vit-large-patch14`` ->
    ``openai-clip-vit-large-patch14``); tiny ids map to ``tiny-<role>``; a local directory maps
    to its last component plus a short hash of its absolute path, so two checkpoints that share
    a folder name do not collide.
    """
    if model_id.startswith(TINY_PREFIX):
        return _safe(f"tiny-{model_id[len(TINY_PREFIX) :]}")
    path = Path(model_id).expanduser()
    if path.is_absolute() or _looks_like_path(model_id) or path.is_dir():
        absolute = str(path.resolve())
        digest = hashlib.sha1(absolute.encode("utf-8")).hexdigest()[:8]
        return f"{_safe(path.resolve().name) or 'model'}-{digest}"
    return _safe(model_id.replace("/", "-"))


def _safe(text: str) -> str:
    """Replace runs of characters outside ``[A-Za-z0-9._-]`` by ``-``."""
    return _UNSAFE.sub("-", text).strip("-.")
