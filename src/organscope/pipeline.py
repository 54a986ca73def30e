"""The one segmentation pipeline: validate -> segment -> post-process (-> write all outputs), used by the Python
API, the CLI's single-scan path, batch (local pool and Dask) and the service. Plain typed arguments: the options
of a segmentation travel as one frozen `SegmentOptions`.

    opts = SegmentOptions(engine="cnn3d", organs=("mandible",), priors=True)
    seg = segment_volume(volume, opts, progress=callback)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .engines.base import ProgressFn
from .engines.registry import DEFAULT_ENGINE, get_engine
from .segmentation import Segmentation
from .volume import Volume


@dataclass(frozen=True)
class SegmentOptions:
    """What to run on a scan: the engine (and its model, threads), an organ subset (names or aliases; None = all)
    and the anatomical-prior clean-up measured for that engine."""

    engine: str = DEFAULT_ENGINE
    model: str | None = None
    threads: int | None = None
    organs: tuple[str, ...] | None = None
    priors: bool = False

    def __post_init__(self):
        if self.organs is not None:
            object.__setattr__(self, "organs", tuple(self.organs))
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))


@lru_cache(maxsize=8)
def cached_engine(name: str, model: str | None = None, threads: int | None = None):
    """An engine loaded once per (name, model, threads) in this process (model paths cache by their text)."""
    return get_engine(name, model=model, threads=threads)


def load_engine(options: SegmentOptions):
    """The engine of `options`, loaded once per (engine, model, threads) in this process."""
    return cached_engine(options.engine, options.model, options.threads)


def segment_volume(volume: Volume, options: SegmentOptions = SegmentOptions(), *,
                   progress: ProgressFn | None = None) -> Segmentation:
    """Segment -> post-process: the label map of `volume` on its own grid with the options' organ subset and
    priors. The priors' anchors may be organs the user did not ask for, so with priors everything is segmented
    and the subset kept afterwards."""
    eng = load_engine(options)
    if not options.priors:
        return eng.segment(volume, organs=options.organs, progress=progress)
    from .postprocess.priors import apply_priors

    seg = apply_priors(eng.segment(volume, progress=progress), engine=eng.name)
    return seg if options.organs is None else seg.keep(options.organs)
