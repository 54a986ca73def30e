"""The sparse point classifier engine (Yerebakan et al.): descriptor gather + residual MLP per point,
hierarchical coarse-to-fine segmentation."""
from .engine import PointResult, PreparedScan, SparseEngine
from .model import SparseModel

__all__ = ["SparseEngine", "SparseModel", "PreparedScan", "PointResult"]
