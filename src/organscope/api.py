"""The Python API: load a scan, segment it, query points. Accepts a path or a Volume wherever a scan is asked.

    >>> import organscope as osc
    >>> vol = osc.load_volume("scan.nii.gz")
    >>> res = osc.query(vol, [[10.0, -20.0, 35.0]])      # world mm, RAS
    >>> res.names, res.probability
    >>> seg = osc.segment(vol)                            # label map on the scan's own grid (the ensemble engine)
    >>> osc.save_segmentation(seg, "labels.nii.gz")
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from .engines.base import ProgressFn, supports_query
from .engines.registry import DEFAULT_ENGINE, DEFAULT_QUERY_ENGINE, engine_of_model, query_engines
from .errors import ModelError
from .io import load_volume, save_labels
from .pipeline import SegmentOptions, cached_engine, segment_volume
from .segmentation import Segmentation
from .volume import Volume


def _engine(name: str, model, threads: int | None):
    return cached_engine(name, None if model is None else str(model), threads)  # paths cache by their text


def engine(name: str | None = None, *, model: str | None = None, threads: int | None = None):
    """A loaded engine (cached per name/model/threads), for repeated calls on many scans or points. `name` None:
    the engine of `model`'s card, or the default segmentation engine (DEFAULT_ENGINE) without a model; point
    queries need engine("sparse") (DEFAULT_QUERY_ENGINE)."""
    return _engine(_engine_name(name, model, DEFAULT_ENGINE), model, threads)


def _engine_name(name: str | None, model, default: str) -> str:
    if name is not None:
        return name
    return default if model is None else engine_of_model(model)


def _volume(scan) -> Volume:
    return scan if isinstance(scan, Volume) else load_volume(scan)


def segment(scan, *, engine: str | None = None, model: str | None = None, threads: int | None = None,
            organs=None, priors: bool = False, progress: ProgressFn | None = None,
            keep_unverified: bool = False) -> Segmentation:
    """Multi-organ label map of `scan` (path or Volume) on the scan's own grid and orientation, by `engine` (None:
    the engine of `model`'s card, or the default, the ensemble, best out of fold).
    `organs` (names) restricts the result to those organs: engines with one model per organ (slice2d) run
    only those models; the others segment everything and keep only the chosen labels. `priors` applies the
    anatomical-prior rules measured to raise this engine's validation Dice (postprocess.priors). Organs failing
    the anatomy check (organscope.qc) are left out unless `keep_unverified`; `seg.qc` says which and why."""
    options = SegmentOptions(engine, model, threads, None if organs is None else tuple(organs), priors,
                             keep_unverified)
    return segment_volume(_volume(scan), options, progress=progress)


def query_engine(name: str | None = None, *, model: str | None = None, threads: int | None = None):
    """The loaded engine that answers `query` (cached like `engine`): `name`, or the engine of `model`'s card, or
    DEFAULT_QUERY_ENGINE; its `prepare(volume)` readies a scan for many calls. An engine without point queries
    is an error in one sentence."""
    name = _engine_name(name, model, DEFAULT_QUERY_ENGINE)
    eng = _engine(name, model, threads)
    if not supports_query(eng):
        raise ModelError(f"The {name} engine does not answer point queries; use one of {', '.join(query_engines())}.")
    return eng


def query(scan, points, *, voxel: bool = False, engine: str | None = None, model: str | None = None,
          threads: int | None = None, keep_unverified: bool = False):
    """Organ, probability and top-3 at each point: world mm (RAS) by default, voxel indices if voxel=True.
    `scan` may be a path, a Volume, or a prepared scan from `query_engine().prepare(volume)` (fastest for many
    calls). `engine` is any engine with the point-query capability (engines.base.PointQueryEngine; None: the
    engine of `model`'s card, or DEFAULT_QUERY_ENGINE).
    When the scan is outside the model's body region (`query_check`), every answer's organ is "unknown" (the
    model's own pick stays in top3_names) unless `keep_unverified`."""
    eng = query_engine(engine, model=model, threads=threads)
    if isinstance(scan, (Volume, str, os.PathLike)):
        scan = _volume(scan)
    res = eng.query(scan, np.asarray(points, dtype=float), voxel=voxel)
    region, check = _query_check(eng, scan)
    if check is not None and not keep_unverified and check.region != region:
        res = replace(res, names=tuple(UNKNOWN for _ in res.names))
    return res


UNKNOWN = "unknown"


def _query_check(eng, scan):
    from .qc import query_region

    return query_region(eng, scan if isinstance(scan, Volume) else getattr(scan, "volume", None))


def query_check(scan, *, engine: str | None = None, model: str | None = None, threads: int | None = None):
    """The anatomy check behind `query`'s answers: (the model's body region, the scan's `qc.RegionCheck`), the
    scan's computed once per scan array. An answer is "unknown" when the two regions differ."""
    eng = query_engine(engine, model=model, threads=threads)
    if isinstance(scan, (str, os.PathLike)):
        scan = _volume(scan)
    return _query_check(eng, scan)


def save_segmentation(seg: Segmentation, path: str | os.PathLike) -> None:
    """Write the label map (atomically) with a JSON sidecar of organ names, confidence and the anatomy check."""
    from .outputs import sidecar_extra

    save_labels(seg.labels, seg.labels.array, path, {0: "background", **seg.names}, sidecar_extra(seg))


def present_labels(seg: Segmentation) -> np.ndarray:
    vals = np.unique(seg.labels.array)
    return vals[vals > 0]
