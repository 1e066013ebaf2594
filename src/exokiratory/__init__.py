"""exokiratory: restart-proof, multi-pass exploration of large image collections.

``import exokiratory`` stays light (no torch, no DuckDB views, no report): :class:`Workspace` is
imported on first use (``exokiratory.Workspace``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from exokiratory.api.workspace import Workspace

__all__ = ["Workspace", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Workspace":
        from exokiratory.api.workspace import Workspace

        return Workspace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
