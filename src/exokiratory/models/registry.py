"""Which model backs each embedding role: profiles, hub ids and local directories.

This module is deliberately free of torch (and of transformers) so that the core of exokiratory
can name, hash and plan models on machines that cannot run them.

Roles:

* ``"clip"``: a CLIP model; its image embeddings live in the CLIP space shared with text.
* ``"dino"``: a DINOv2 backbone; its image embeddings (CLS token) live in the DINO space.
* ``"sam"``: a Segment Anything model (SAM ViT-H/L/B or SAM 2 Hiera) for promptable masks.

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

ROLES: Final[tuple[str, ...]] = ("clip", "dino", "sam")
"""Roles a model can fill."""

PROFILES: Final[dict[str, dict[str, str]]] = {
    "full": {
        "clip": "openai/clip-vit-large-patch14",
        "dino": "facebook/dinov2-large",
        "sam": "facebook/sam-vit-huge",
    },
    "lite": {
        "clip": "openai/clip-vit-base-patch32",
        "dino": "facebook/dinov2-small",
        "sam": "facebook/sam-vit-base",
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
}
"""Extra profile names that only make sense for one role."""

TINY_PROFILE: Final[str] = "tiny"
"""Profile of random-weight models built locally (outputs are plumbing, never meaning)."""

TINY_PREFIX: Final[str] = "tiny:"
"""Prefix of the ``model_id`` of a tiny-profile spec (``"tiny:clip"``, ``"tiny:dino"``)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
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
        known = ", ".join([*PROFILES, TINY_PROFILE])
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
