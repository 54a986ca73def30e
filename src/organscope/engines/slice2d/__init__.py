"""The slice2d engine (Salimi et al.): body crop, one small 2D Res-UNet per organ, organ subsets.

The engine is imported on first use, so reading the model card (`card.Slice2dCard`) stays fast."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Slice2dEngine

__all__ = ["Slice2dEngine"]


def __getattr__(name: str):
    if name == "Slice2dEngine":
        from .engine import Slice2dEngine
        return Slice2dEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
