"""The prompt registry: versioned prompt sets, validated up front, one file per workspace.

File: ``<workspace>/prompts/prompt_registry.yaml`` (DESIGN.md layout), a copy of the packaged
default (``exokiratory/prompts/prompt_registry.yaml``) written by ``init`` or on first use; users
edit the copy. Structure::

    registry_version: 1
    prompt_sets:
      - id: semantic-flags          # lower-case id, unique in the file
        version: "1"               # a version string (digits, letters, . _ -)
        description: ...
        groups:                     # one zero-shot question each; ids unique in the set
          - id: modality
            version: "1"
            templates: ["{}", "a picture that is {}"]   # each holds "{}" exactly once
            classes:                # at least 2; ids unique in the group
              - id: photo
                prompts: [a photograph, a snapshot]

Texts of a class = every template with ``{}`` replaced by every prompt (templates x prompts).
A set's :attr:`PromptSet.digest` is the SHA-256 of its canonical JSON; its
:attr:`PromptSet.full_version` (``<version>+<digest[:8]>``) is what derived rows record, so
an edited set always yields a new version, bumped or not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exokiratory.core.storage import Storage

REGISTRY_FILE = "prompts/prompt_registry.yaml"
DEFAULT_SET = "semantic-flags"

_ID = r"^[a-z][a-z0-9_\-]*$"
_VERSION = r"^[0-9A-Za-z][0-9A-Za-z._\-]*$"

Id = Annotated[str, Field(pattern=_ID, max_length=64)]
Version = Annotated[str, Field(pattern=_VERSION, max_length=32)]
Text = Annotated[str, Field(min_length=1, max_length=300)]


class PromptRegistryError(ValueError):
    """The prompt registry file is missing, not YAML, or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"{what} ids must be unique; {i!r} appears more than once")
        seen.add(i)


class PromptClass(_Strict):
    """One class of a zero-shot group: its prompts are averaged into one text vector."""

    id: Id
    description: str = ""
    prompts: list[Text] = Field(min_length=1)

    @field_validator("prompts")
    @classmethod
    def _no_placeholder(cls, v: list[str]) -> list[str]:
        for p in v:
            if "{}" in p:
                raise ValueError(f"prompt {p!r} holds '{{}}': placeholders belong in templates")
            if not p.strip():
                raise ValueError("a prompt must not be blank")
        return v


class PromptGroup(_Strict):
    """One zero-shot question: its classes compete in one softmax."""

    id: Id
    version: Version
    description: str = ""
    templates: list[Text] = Field(default_factory=lambda: ["{}"], min_length=1)
    classes: list[PromptClass] = Field(min_length=2)

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, v: list[str]) -> list[str]:
        for t in v:
            if t.count("{}") != 1:
                raise ValueError(f"template {t!r} must hold '{{}}' exactly once")
        if len(set(v)) != len(v):
            raise ValueError("templates must be unique")
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[PromptClass]) -> list[PromptClass]:
        _unique([c.id for c in v], "class")
        return v

    def texts(self, cls: PromptClass) -> list[str]:
        """Every text of a class: each template with ``{}`` replaced by each prompt."""
        return [t.replace("{}", p) for p in cls.prompts for t in self.templates]


class PromptSet(_Strict):
    """A versioned set of zero-shot groups."""

    id: Id
    version: Version
    description: str = ""
    groups: list[PromptGroup] = Field(min_length=1)

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, v: list[PromptGroup]) -> list[PromptGroup]:
        _unique([g.id for g in v], "group")
        return v

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the whole set (any edit changes it)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def full_version(self) -> str:
        """``<version>+<first 8 hex of the digest>``: recorded in every derived row."""
        return f"{self.version}+{self.digest[:8]}"

    def group(self, group_id: str) -> PromptGroup | None:
        return next((g for g in self.groups if g.id == group_id), None)


CaptionTask = Literal["caption", "dense", "segment"]


class CaptionPrompt(_Strict):
    """A caption prompt (PASS 5): ``task`` says what it is for (``caption``: short factual
    image captions, ``dense``: detailed descriptions, ``segment``: a segment's masked crop).
    Its text may not change while its version stays the same (see
    :mod:`exokiratory.core.prompts.versions`)."""

    id: Id
    version: Version
    task: CaptionTask
    description: str = ""
    text: Annotated[str, Field(min_length=1, max_length=2000)]

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a prompt text must not be blank")
        return v

    @property
    def digest(self) -> str:
        """SHA-256 of the prompt text (what a version is recorded with)."""
        return hashlib.sha256(self.text.encode()).hexdigest()


class PromptRegistry(_Strict):
    """The whole registry file."""

    registry_version: Literal[1] = 1
    prompt_sets: list[PromptSet] = Field(min_length=1)
    caption_prompts: list[CaptionPrompt] = Field(default_factory=list)

    @field_validator("prompt_sets")
    @classmethod
    def _unique_sets(cls, v: list[PromptSet]) -> list[PromptSet]:
        _unique([s.id for s in v], "prompt set")
        return v

    @field_validator("caption_prompts")
    @classmethod
    def _unique_prompts(cls, v: list[CaptionPrompt]) -> list[CaptionPrompt]:
        _unique([p.id for p in v], "caption prompt")
        return v

    def caption_prompt(self, prompt_id: str, where: str = REGISTRY_FILE) -> CaptionPrompt:
        """The caption prompt ``prompt_id``; a clear error naming the known ones otherwise."""
        for p in self.caption_prompts:
            if p.id == prompt_id:
                return p
        known = ", ".join(p.id for p in self.caption_prompts) or "none"
        raise PromptRegistryError(
            f"{where}: caption_prompts: no prompt {prompt_id!r}; known: {known}"
        )

    def get(self, set_id: str) -> PromptSet:
        """The prompt set named ``set_id``; a clear error naming the known ones otherwise."""
        for s in self.prompt_sets:
            if s.id == set_id:
                return s
        known = ", ".join(s.id for s in self.prompt_sets)
        raise PromptRegistryError(f"{REGISTRY_FILE}: no prompt set {set_id!r}; known: {known}")


def _location(loc: tuple[int | str, ...], data: object) -> str:
    """A readable key path: list indices become the item's id where it has one."""
    parts: list[str] = []
    node = data
    for p in loc:
        if isinstance(p, int) and isinstance(node, list) and 0 <= p < len(node):
            node = node[p]
            ident = node.get("id") if isinstance(node, dict) else None
            parts.append(f"[{ident}]" if isinstance(ident, str) else f"[{p}]")
            continue
        node = node.get(p) if isinstance(node, dict) else None
        parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


@functools.lru_cache(maxsize=8)
def _parse_yaml(text: str) -> Any:
    """The YAML of a registry (cached: every catalog reads it; never mutated by callers)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_registry(text: str, where: str = REGISTRY_FILE) -> PromptRegistry:
    """Parse and validate a registry; errors name the file and every bad key."""
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise PromptRegistryError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptRegistryError(f"{where}: the top level must be a mapping with prompt_sets")
    try:
        return PromptRegistry.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: invalid prompt registry"]
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {_location(tuple(e['loc']), data)}: {msg}")
        raise PromptRegistryError("\n".join(lines)) from exc


def default_registry_text() -> str:
    """The packaged default registry file."""
    return (
        importlib.resources.files("exokiratory.core.prompts")
        .joinpath("prompt_registry.yaml")
        .read_text(encoding="utf-8")
    )


def ensure_workspace_registry(storage: Storage) -> bool:
    """Write the packaged default to the workspace unless it has a registry; True if written."""
    if storage.exists(REGISTRY_FILE):
        return False
    storage.write_bytes_atomic(REGISTRY_FILE, default_registry_text().encode("utf-8"))
    return True


def registry_text(storage: Storage) -> str:
    """The workspace's registry text (the packaged default is written there first if absent)."""
    ensure_workspace_registry(storage)
    return storage.read_bytes(REGISTRY_FILE).decode("utf-8")


def load_registry(storage: Storage) -> PromptRegistry:
    """The workspace's validated registry (created from the default on first use)."""
    return parse_registry(registry_text(storage), f"{storage.url.rstrip('/')}/{REGISTRY_FILE}")
