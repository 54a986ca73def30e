"""The Python API: load a scan, segment it, query points. Accepts a path or a Volume wherever a scan is asked.

    >>> import organscope as osc
    >>> vol = osc.load_volume("scan.nii.gz")
    >>> res = osc.query(vol, [[10.0, -20.0, 35.0]])      # world mm, RAS
    >>> res.names, res.probability
    >>> seg = osc.segment(vol)                            # label map on the scan's own grid
    >>> osc.save_segmentation(seg, "labels.nii.gz")
"""
from __future__ import annotations

import os
import numpy as np

from .engines.base import ProgressFn, supports_query
from .engines.registry import DEFAULT_ENGINE, query_engines
from .errors import InputError, ModelError
from .io import load_volume, save_labels
from .pipeline import SegmentOptions, cached_engine, segment_volume
from .segmentation import Segmentation
from .volume import Volume


def _engine(name: str, model, threads: int | None):
    return cached_engine(name, None if model is None else str(model), threads)  # paths cache by their text


def engine(name: str = DEFAULT_ENGINE, *, model: str | None = None, threads: int | None = None):
    """A loaded engine (cached per name/model/threads), for repeated calls on many scans or points."""
    return _engine(name, model, threads)


def _volume(scan) -> Volume:
    return scan if isinstance(scan, Volume) else load_volume(scan)


def segment(scan, *, engine: str = DEFAULT_ENGINE, model: str | None = None, threads: int | None = None,
            organs=None, priors: bool = False, progress: ProgressFn | None = None) -> Segmentation:
    """Multi-organ label map of `scan` (path or Volume) on the scan's own grid and orientation.
    `organs` (names) restricts the result to those organs: engines with one model per organ (slice2d) run
    only those models; the others segment everything and keep only the chosen labels. `priors` applies the
    anatomical-prior rules measured to raise this engine's validation Dice (postprocess.priors)."""
    options = SegmentOptions(engine, model, threads, None if organs is None else tuple(organs), priors)
    return segment_volume(_volume(scan), options, progress=progress)


def query(scan, points, *, voxel: bool = False, engine: str = DEFAULT_ENGINE, model: str | None = None,
          threads: int | None = None):
    """Organ, probability and top-3 at each point: world mm (RAS) by default, voxel indices if voxel=True.
    `scan` may be a path, a Volume, or a prepared scan from `engine().prepare(volume)` (fastest for many calls).
    `engine` is any engine with the point-query capability (engines.base.PointQueryEngine)."""
    eng = _engine(engine, model, threads)
    if not supports_query(eng):
        raise ModelError(f"The {engine} engine does not answer point queries; use one of "
                         f"{', '.join(query_engines())}.")
    if isinstance(scan, (Volume, str, os.PathLike)):
        scan = _volume(scan)
    points = np.asarray(points, dtype=float)
    if voxel:
        _check_voxels(points, scan if isinstance(scan, Volume) else getattr(scan, "volume", None))
    return eng.query(scan, points, voxel=voxel)


def _check_voxels(points: np.ndarray, volume: Volume | None) -> None:
    """InputError, in voxels, for voxel indices outside the scan (after rounding to the nearest voxel)."""
    if volume is None or points.size == 0:
        return
    pts = points.reshape(-1, 3)
    if not np.isfinite(pts).all():
        raise InputError("Query points must be finite numbers (got NaN or infinity).")
    ijk = np.rint(pts).astype(np.int64)
    outside = np.any((ijk < 0) | (ijk >= np.asarray(volume.shape)), axis=1)
    if outside.any():
        bad = pts[np.argmax(outside)]
        shape = tuple(int(n) for n in volume.shape)
        raise InputError(f"Voxel ({', '.join(f'{v:g}' for v in bad)}) lies outside the scan, whose shape is "
                         f"{shape[0]} x {shape[1]} x {shape[2]} (indices 0..{shape[0] - 1}, 0..{shape[1] - 1}, "
                         f"0..{shape[2] - 1}); {int(outside.sum())} of {len(pts)} points are outside.")


def save_segmentation(seg: Segmentation, path: str | os.PathLike) -> None:
    """Write the label map (atomically) with a JSON sidecar of organ names."""
    save_labels(seg.labels, seg.labels.array, path, {0: "background", **seg.names})


def present_labels(seg: Segmentation) -> np.ndarray:
    vals = np.unique(seg.labels.array)
    return vals[vals > 0]
