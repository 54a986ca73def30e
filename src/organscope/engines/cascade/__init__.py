"""The cascade engine (locate, then segment): organ boxes from a localiser, then one compact 3D residual U-Net
per group of neighbouring organs on a crop around the group, merged by the highest probability.

The engine is imported on first use, so reading the model card (`card.CascadeCard`) stays fast."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .groups import GROUPS

if TYPE_CHECKING:
    from .engine import CascadeEngine

__all__ = ["CascadeEngine", "GROUPS"]


def __getattr__(name: str):
    if name == "CascadeEngine":
        from .engine import CascadeEngine
        return CascadeEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
