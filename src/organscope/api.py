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
from .errors import ModelError
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
    return eng.query(scan, np.asarray(points, dtype=float), voxel=voxel)


def save_segmentation(seg: Segmentation, path: str | os.PathLike) -> None:
    """Write the label map (atomically) with a JSON sidecar of organ names."""
    save_labels(seg.labels, seg.labels.array, path, {0: "background", **seg.names})


def present_labels(seg: Segmentation) -> np.ndarray:
    vals = np.unique(seg.labels.array)
    return vals[vals > 0]
