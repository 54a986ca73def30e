"""Segmentation and point-classification metrics: arrays in, numbers out, spacing explicit.

`evaluate_dirs` / `main_evaluate` (file-level scoring) live in `organscope.metrics.report`.
"""
from .overlap import Counts, confusion, dice, jaccard
from .points import macro_f1, per_class_f1, point_accuracy
from .surface import SurfaceDistances, surface_distances, surface_voxels

__all__ = ["Counts", "confusion", "dice", "jaccard", "SurfaceDistances", "surface_distances", "surface_voxels",
           "point_accuracy", "macro_f1", "per_class_f1"]
