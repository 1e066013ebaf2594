"""exokiratory: restart-proof, multi-pass exploration of large image collections."""

from __future__ import annotations

__version__ = "0.1.0"

from exokiratory.workspace import Workspace

__all__ = ["Workspace", "__version__"]
