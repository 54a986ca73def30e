"""The sparse point classifier engine (Yerebakan et al.): descriptor gather + residual MLP per point,
hierarchical coarse-to-fine segmentation.

The engine and its model are imported on first use (they bring numba and ONNX Runtime), so reading the model card
(`card.SparseCard`) stays fast."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import PointResult, PreparedScan, SparseEngine
    from .model import SparseModel

__all__ = ["SparseEngine", "SparseModel", "PreparedScan", "PointResult"]


def __getattr__(name: str):
    if name in ("SparseEngine", "PreparedScan", "PointResult"):
        from . import engine
        return getattr(engine, name)
    if name == "SparseModel":
        from .model import SparseModel
        return SparseModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
