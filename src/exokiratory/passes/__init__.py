"""The pass registry: every pass by name, in pipeline order (``run all`` runs them in this order)."""

from __future__ import annotations

from typing import Any

from exokiratory.passes.base import BatchContext, ImagePass, Pass, PassParams
from exokiratory.passes.probe import ProbePass

#: Pass classes in pipeline order.
PASS_CLASSES: tuple[type[Pass], ...] = (ProbePass,)

REGISTRY: dict[str, type[Pass]] = {cls.name: cls for cls in PASS_CLASSES}


def pass_names() -> list[str]:
    return [cls.name for cls in PASS_CLASSES]


def get_pass(name: str, params: dict[str, Any] | None = None) -> Pass:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown pass {name!r}; known passes: {', '.join(pass_names())}"
        ) from None
    return cls(params)


__all__ = [
    "PASS_CLASSES",
    "REGISTRY",
    "BatchContext",
    "ImagePass",
    "Pass",
    "PassParams",
    "get_pass",
]
