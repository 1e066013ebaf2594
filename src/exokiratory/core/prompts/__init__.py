"""Prompt registry: versioned prompt sets for zero-shot flags (and later captions / VLM
questions); see :mod:`exokiratory.core.prompts.registry`."""

from __future__ import annotations

from exokiratory.core.prompts.registry import (
    DEFAULT_SET,
    REGISTRY_FILE,
    CaptionPrompt,
    PromptClass,
    PromptGroup,
    PromptRegistry,
    PromptRegistryError,
    PromptSet,
    default_registry_text,
    ensure_workspace_registry,
    load_registry,
    parse_registry,
    registry_text,
)

__all__ = [
    "DEFAULT_SET",
    "REGISTRY_FILE",
    "CaptionPrompt",
    "PromptClass",
    "PromptGroup",
    "PromptRegistry",
    "PromptRegistryError",
    "PromptSet",
    "default_registry_text",
    "ensure_workspace_registry",
    "load_registry",
    "parse_registry",
    "registry_text",
]
