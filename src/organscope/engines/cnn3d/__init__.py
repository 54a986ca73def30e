"""The cnn3d engine (COBRA, Henderson et al.): a tiny factorised 3D U-Net on the whole scan, ONNX on CPU.

The engine is imported on first use, so reading the model card (`card.Cnn3dCard`) stays fast."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Cnn3dEngine

__all__ = ["Cnn3dEngine"]


def __getattr__(name: str):
    if name == "Cnn3dEngine":
        from .engine import Cnn3dEngine
        return Cnn3dEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
