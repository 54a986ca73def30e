"""The one segmentation pipeline: load -> validate -> segment -> post-process -> write all outputs, used by the
Python API (`segment_volume`), the CLI's single-scan path and batch (local pool and Dask: `run`) and the service.
Plain typed arguments: the options of a segmentation travel as one frozen `SegmentOptions`, the files to write as
one `outputs.OutputPaths`.

    opts = SegmentOptions(engine="cnn3d", organs=("mandible",), priors=True)
    seg = segment_volume(volume, opts, progress=callback)
    res = run("scan.nii.gz", OutputPaths(labels=Path("out.nii.gz"), statistics=Path("out.statistics.json")), opts)
    res.written, res.organs, res.timings_s
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .engines.base import ProgressFn
from .engines.registry import DEFAULT_ENGINE, engine_of_model, get_engine
from .memory import ordinary_pages
from .segmentation import Segmentation
from .volume import Volume

if TYPE_CHECKING:
    from .outputs import OutputPaths


@dataclass(frozen=True)
class SegmentOptions:
    """What to run on a scan: the engine (and its model, threads), an organ subset (names or aliases; None = all)
    and the anatomical-prior clean-up measured for that engine. keep_unverified: keep the organs that fail the
    anatomy check (`organscope.qc`) in the label map, marked in `Segmentation.qc`, instead of leaving them out.
    engine None: the engine of `model`'s card, or DEFAULT_ENGINE without a model."""

    engine: str | None = None
    model: str | None = None
    threads: int | None = None
    organs: tuple[str, ...] | None = None
    priors: bool = False
    keep_unverified: bool = False

    def __post_init__(self):
        if self.engine is None:
            object.__setattr__(self, "engine", DEFAULT_ENGINE if self.model is None else engine_of_model(self.model))
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
    """Segment -> post-process -> anatomy check: the label map of `volume` on its own grid with the options'
    organ subset and priors, organs failing the anatomy check left out (unless options.keep_unverified) and the
    check in `Segmentation.qc`. The priors' anchors may be organs the user did not ask for, so with priors
    everything is segmented and the subset kept afterwards."""
    from .qc import apply_qc, model_min_confidence, model_region

    eng = load_engine(options)
    with ordinary_pages():  # full-size maps and masks, written once: see memory.py
        if not options.priors:
            seg = eng.segment(volume, organs=options.organs, progress=progress)
        else:
            from .postprocess.priors import apply_priors

            seg = apply_priors(eng.segment(volume, progress=progress), engine=eng.name)
            seg = seg if options.organs is None else seg.keep(options.organs)
        t0 = time.perf_counter()
        seg = apply_qc(volume, seg, model_region=model_region(eng), keep_unverified=options.keep_unverified,
                       engine=getattr(eng, "name", options.engine), min_confidence=model_min_confidence(eng))
    return replace(seg, timings_s={**seg.timings_s, "qc": time.perf_counter() - t0})


@dataclass(frozen=True)
class RunResult:
    """What one `run` did: the files (and mask folder) written, the organs found (names, sorted) and timings in
    seconds: the engine's own (its "total" is the segmentation), plus "load", "write" and "run" (everything)."""

    scan: str
    written: tuple[Path, ...]
    organs: tuple[str, ...]
    timings_s: Mapping[str, float]
    warning: str | None = None  # the anatomy check's one line (QCResult.warning): None when every organ passed

    def found(self) -> str:
        """"3 organ(s) found (a, b, c)": the line the CLI and batch print."""
        return f"{len(self.organs)} organ(s) found ({', '.join(self.organs) or 'none'})"

    def warning_line(self, name: str | None = None) -> str | None:
        """The anatomy check's warning as the CLI and batch print it on stderr (batch: after the scan's `name`), or
        None when it has nothing to say."""
        if not self.warning:
            return None
        return f"organscope: warning: {name + ': ' if name else ''}{self.warning}"


def run(scan: str | os.PathLike | Volume, targets: "OutputPaths", options: SegmentOptions = SegmentOptions(), *,
        progress: ProgressFn | None = None, series_uid: str | None = None) -> RunResult:
    """Load `scan` (a path or a Volume), check that the outputs asked for can be made from it, segment it with
    `options` and write every output `targets` names. A run writes all its new outputs or none: when one fails,
    the files it had already made are removed (files that existed before are left as they are). `series_uid`
    picks one CT series of a DICOM folder that holds several."""
    t0 = time.perf_counter()
    if not isinstance(scan, Volume):
        _check_not_input(scan, targets)
    ct = scan if isinstance(scan, Volume) else _load(scan, series_uid)
    t_load = time.perf_counter() - t0
    if targets.dicom_seg is not None or targets.rtstruct is not None:
        from .outputs.dicom_seg import require_dicom_source

        require_dicom_source(ct, "A DICOM-SEG" if targets.dicom_seg is not None else "An RTSTRUCT")
    seg = segment_volume(ct, options, progress=progress)
    t1 = time.perf_counter()
    written = _write_all_or_none(ct, seg, targets, options)
    t2 = time.perf_counter()
    present = np.unique(seg.labels.array)
    organs = tuple(sorted({seg.names[int(v)] for v in present if v > 0}))
    timings = {**seg.timings_s, "load": t_load, "write": t2 - t1, "run": t2 - t0}
    source = str(scan) if not isinstance(scan, Volume) else str(ct.meta.get("source", "<volume>"))
    qc = getattr(seg, "qc", None)
    return RunResult(source, tuple(written), organs, timings, None if qc is None else qc.warning())


def _load(path, series_uid: str | None = None) -> Volume:
    from .io import load_volume

    return load_volume(path, series_uid=series_uid)


def _check_not_input(scan, targets: "OutputPaths") -> None:
    """InputError if an output (or the label map's .json) would replace the input scan, or one of the files of an
    input DICOM folder, or the folder itself: through a link, another spelling or a hard link too."""
    from .io import check_not_input, sidecar_path

    src = Path(scan)
    inputs = [src]
    if src.is_dir():
        inputs += [f for f in src.iterdir() if f.is_file()]
    elif src.name.lower().endswith((".mhd", ".nhdr")):
        inputs += [f for f in src.parent.iterdir() if f.is_file() and f.suffix.lower() in (".raw", ".gz", ".zraw")]
    paths = list(targets.wanted().values()) + ([sidecar_path(targets.labels)] if targets.labels else [])
    check_not_input(paths, inputs)


def _write_all_or_none(ct: Volume, seg: Segmentation, targets: "OutputPaths", options: SegmentOptions) -> list[Path]:
    """Stage every output under a hidden name next to its target, then move them all into place (io.commit). On
    any failure, or a signal turned into an exception, nothing new is left and the files that were there before
    are kept as they were."""
    from dataclasses import replace

    from .io import commit, remove_path, sidecar_path, staged_path
    from .outputs import write_outputs

    wanted = targets.wanted()
    staged = {key: staged_path(path) for key, path in wanted.items()}
    pairs = [(staged[key], Path(wanted[key])) for key in wanted]
    if targets.labels is not None:
        pairs.append((sidecar_path(staged["labels"]), sidecar_path(targets.labels)))
    try:
        write_outputs(ct, seg, replace(targets, **staged), engine=options.engine, model=options.model)
        commit(pairs)
    except BaseException:
        for tmp, _ in pairs:
            remove_path(tmp)
        raise
    return [Path(wanted[key]) for key in wanted]
