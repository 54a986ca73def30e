"""The ensemble engine: several engines' class probabilities averaged on one grid, then one argmax.

The engines make different errors (issue 14). The default members and weights are fitted out of fold
(cv/README.md, `crossval ensemble`): each fold's cnn3d and sparse models (trained without the fold's patients)
fused with every weight pair on a 0.1 grid, scored on the fold's held-out patients. With the balanced cnn3d
recipe, all 5 folds (203 patients), every fold's complement chose sparse 0.7 / cnn3d 0.3: cross-fitted mean Dice
0.723 (0.710-0.736), +0.006 (+0.004 to +0.008, paired) over the sparse engine alone, +0.071 over cnn3d alone;
with the earlier cnn3d recipe (folds 0-2) 0.8 / 0.2 was chosen, +0.004. Equal weights of sparse, cnn3d and the
cascade (what this engine used before) scored 0.03 below the sparse engine alone out of fold, and the cascade as
a third member did no better than cnn3d as the second (best 0.708 with it, 0.707 without, folds 0-1), so it is not
a default member: two members also run at once on two cores, one each.

Each member computes its class probabilities on its own working grid (a network grid, a refinement level), as
its segment(probabilities=True) would but without its label map (`class_probabilities`), one member per core at
once. They are interpolated (linearly) onto the fusion grid, the scan's own grid coarsened to at most FUSION_MM
per voxel (a 512 x 512 x 300 scan at 0.8 x 0.8 x 1.5 mm: 164 x 164 x 180), averaged with the weights, and the
winner of each fusion voxel is kept as its largest 26-connected component per organ; the label map comes back
to the scan's voxels by nearest neighbour. An organ's confidence is the mean fused probability of the class
picked over its fusion voxels.

The anatomy check leaves out an organ of the default ensemble whose fused confidence is below QC_MIN_CONFIDENCE,
fitted out of fold like the sparse model's `qc_min_confidence` (`crossval ensemble --confidence-threshold`,
cv/ensemble_sparse_cnn3d_balanced/confidence_threshold.json): over the 1071 organs the fold ensembles found in
their 203 held-out patients, the highest threshold below which at least 90 % of organs were failures (Dice < 0.5).
Chosen on four folds and applied to the fifth, it left out 12 organs, 11 of them failures, of 61 failures; the
sparse engine's 0.70, the same way, 13 organs, 12 failures, of its 67. Other members, weights or member models
have no fitted threshold, hence no confidence check."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...components import largest_components
from ...concurrency import kernels_run_concurrently
from ...errors import ModelError
from ...geometry import scale_affine
from ...grid import expand_nearest
from ...segmentation import ClassProbabilities, Segmentation, labels_dtype
from ...volume import Volume
from ..base import ProgressFn, no_progress, organ_confidence, require_finite, select_organs

__all__ = ["DEFAULT_MEMBERS", "EnsembleEngine", "FUSION_MM", "OUT_OF_FOLD_MEAN_DICE", "QC_MIN_CONFIDENCE"]

#: (engine, weight): fitted out of fold (see the module's docstring)
DEFAULT_MEMBERS: tuple[tuple[str, float], ...] = (("sparse", 0.7), ("cnn3d", 0.3))
#: the anatomy check's lowest organ confidence for DEFAULT_MEMBERS' shipped models (see the module's docstring)
QC_MIN_CONFIDENCE = 0.64
#: DEFAULT_MEMBERS' out-of-fold mean Dice: each of the 203 OpenKBP patients scored by the fold models of both members
#: that never saw it, the weights chosen on the other folds (cv/ensemble_sparse_cnn3d_balanced/sweep_weights.json,
#: "cross_fitted"); `organscope models` prints it beside the cards' figures
OUT_OF_FOLD_MEAN_DICE = 0.723
#: the fusion grid's largest voxel side in mm (a scan coarser than this along an axis is fused on its own voxels)
FUSION_MM = 2.5


class EnsembleEngine:
    name = "ensemble"

    def __init__(self, model=None, *, threads: int | None = None, members: Sequence[tuple[str, float]] = DEFAULT_MEMBERS,
                 engines: Callable[..., object] | None = None, concurrent_members: int | None = None,
                 linear_output: bool = False):
        """`members`: (engine name, weight) pairs; `engines(name, threads=...)` builds a member (the registry's
        get_engine); `concurrent_members`: how many members run at once (default: one per thread, at most all;
        one where numba cannot launch kernels from several threads); `linear_output`: the scan's labels from the
        fused probabilities interpolated linearly at its voxels (`linear_labels`) instead of the fusion grid's
        labels by nearest neighbour."""
        if model is not None:
            raise ModelError("The ensemble engine has no model of its own: it runs the shipped models of "
                             f"{', '.join(n for n, _ in members)}; pass --model to one of those engines instead.")
        if engines is None:
            from ..registry import get_engine as engines
        if not members or any(w < 0 for _, w in members) or sum(w for _, w in members) <= 0:
            raise ModelError("An ensemble needs at least one member and non-negative weights that are not all 0.")
        self.linear_output = linear_output
        cores = threads or os.cpu_count() or 1
        #: how many members run at once; each gets an equal share of the threads (4 threads on 2 cores, two
        #: members of 2 each, cost 0.3-0.6 s more on the benchmark scan than two of 1)
        self.concurrent_members = (min(len(members), cores, max(1, concurrent_members or cores))
                                   if kernels_run_concurrently() else 1)
        member_threads = max(1, cores // self.concurrent_members)
        self.members = [(engines(n, threads=member_threads), float(w)) for n, w in members]
        first = self.members[0][0]
        for eng, _ in self.members[1:]:
            if tuple(eng.classes) != tuple(first.classes):
                raise ModelError(f"The ensemble's members must segment the same classes in the same order: "
                                 f"{first.name} has {', '.join(first.classes)}, {eng.name} {', '.join(eng.classes)}.")
        self.classes: tuple[str, ...] = tuple(first.classes)
        total = sum(w for _, w in self.members)
        self.weights = tuple(w / total for _, w in self.members)
        default = sum(w for _, w in DEFAULT_MEMBERS)
        is_default = ([n for n, _ in members] == [n for n, _ in DEFAULT_MEMBERS]
                      and np.allclose(self.weights, [w / default for _, w in DEFAULT_MEMBERS])
                      and all(_shipped(eng) for eng, _ in self.members))
        #: organs with a lower fused confidence fail the anatomy check (None: no threshold fitted for these members)
        self.qc_min_confidence: float | None = QC_MIN_CONFIDENCE if is_default else None
        regions = {_body_region(eng) for eng, _ in self.members}
        #: the body region the members' models cover (the anatomy check reads it), None if they differ
        self.body_region = regions.pop() if len(regions) == 1 else None

    def fusion_grid(self, volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
        """(shape, affine) of the fusion grid: the scan's grid, coarsened along each axis whose voxels are
        finer than FUSION_MM (voxel edges aligned with the scan's)."""
        spacing = np.asarray(volume.spacing_mm, float)
        shape = tuple(int(max(1, round(n * s / max(s, FUSION_MM)))) for n, s in zip(volume.shape, spacing))
        zoom = np.asarray(volume.shape, float) / np.asarray(shape, float)
        return shape, scale_affine(np.asarray(volume.affine, float), zoom)

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        wanted = select_organs(self.classes[1:], organs, self.name)
        require_finite(volume)
        t0 = time.perf_counter()
        shape, affine = self.fusion_grid(volume)
        target = Volume(np.broadcast_to(np.int16(0), shape), affine)  # the grid only: no voxels allocated
        fused = np.zeros((len(self.classes), *shape), dtype=np.float32)
        timings: dict[str, float] = {}
        n = len(self.members)
        done = [0.0] * n
        lock = threading.Lock()  # guards `done` and the progress callback

        def run(m: int):
            eng = self.members[m][0]

            def member_progress(stage: str, frac: float) -> None:
                with lock:
                    done[m] = min(max(frac, 0.0), 1.0)
                    progress(f"{eng.name}: {stage}", sum(done) / (n + 0.5))

            t = time.perf_counter()
            if hasattr(eng, "class_probabilities"):  # no label map of its own, which the fusion would not use
                probs = eng.class_probabilities(volume, progress=member_progress)
            else:
                probs = eng.segment(volume, probabilities=True, progress=member_progress).probabilities
            timings[eng.name] = time.perf_counter() - t
            return probs

        def add(m: int, probs: ClassProbabilities) -> None:
            self._add(probs, target, fused, self.weights[m])

        # members side by side (each is partly serial: resampling, numpy), added in the members' order whatever
        # order they finish in, so that the sums, hence the labels, never depend on timing
        if self.concurrent_members > 1:
            with ThreadPoolExecutor(self.concurrent_members, thread_name_prefix="ensemble") as pool:
                futures = [pool.submit(run, m) for m in range(n)]
                for m, f in enumerate(futures):
                    add(m, f.result())
                    futures[m] = None  # drop the member's probabilities once added
        else:
            for m in range(n):
                add(m, run(m))
        t = time.perf_counter()
        progress("fusing the members' probabilities", n / (n + 0.5))
        seg = self._labels(volume, fused, affine, probabilities)
        timings["fusion"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        seg.timings_s.update(timings)
        progress("done", 1.0)
        return seg if organs is None else seg.keep(wanted)

    def fuse(self, volume: Volume, member_probs: Sequence[ClassProbabilities],
             weights: Sequence[float] | None = None, *, probabilities: bool = False) -> Segmentation:
        """The segmentation from members' class probabilities already computed (one per member, in the members'
        order) with `weights` (default: the ensemble's; normalised to sum 1), as segment() would fuse them: how
        out-of-fold weights are chosen (training/crossval.py) without running the members once per weight."""
        if weights is None:
            weights = self.weights  # already normalised: the same sums as segment()
        else:
            weights = np.asarray(weights, float)
            if weights.shape != (len(self.members),) or weights.min() < 0 or weights.sum() <= 0:
                raise ValueError("fuse needs one non-negative weight per member, not all 0")
            weights = weights / weights.sum()
        if len(member_probs) != len(self.members):
            raise ValueError(f"fuse needs one probability set per member ({len(self.members)})")
        shape, affine = self.fusion_grid(volume)
        target = Volume(np.broadcast_to(np.int16(0), shape), affine)
        fused = np.zeros((len(self.classes), *shape), dtype=np.float32)
        for probs, w in zip(member_probs, weights):
            if w > 0:
                self._add(probs, target, fused, float(w))
        return self._labels(volume, fused, affine, probabilities)

    def _add(self, probs: ClassProbabilities, target: Volume, fused: np.ndarray, weight: float) -> None:
        probs.add_on_grid(target, fused, weight, order=[probs.classes.index(c) for c in self.classes])

    def _labels(self, volume: Volume, fused: np.ndarray, affine: np.ndarray, probabilities: bool) -> Segmentation:
        """Fused probabilities on the fusion grid -> the segmentation of the scan (largest component per organ,
        confidence, labels by nearest neighbour or `linear_labels`)."""
        dtype = labels_dtype(len(self.classes))
        labels = largest_components(fused.argmax(axis=0).astype(dtype), len(self.classes))
        picked = np.take_along_axis(fused, labels[None].astype(np.int64), axis=0)[0]
        names = {i: c for i, c in enumerate(self.classes) if i > 0}
        confidence = organ_confidence(labels, picked, names)
        fused_probs = ClassProbabilities(fused, affine, self.classes)
        if self.linear_output:
            out, present = linear_labels(fused_probs, labels, volume)
            kept = {names[v] for v in present if v in names}
            confidence = {n: c for n, c in confidence.items() if n in kept}
        else:
            # every fusion voxel holds the centre of at least one scan voxel (the fusion grid is never finer than
            # the scan's), so the organs on it are those of the map
            out = expand_nearest(labels, volume.shape)
        return Segmentation(volume.with_array(out), names, {}, confidence, fused_probs if probabilities else None)


def linear_labels(fused: ClassProbabilities, labels: np.ndarray, volume: Volume) -> tuple[np.ndarray, set[int]]:
    """The scan's labels as the argmax of the fused probabilities interpolated linearly at each of its voxels,
    within the box of the fusion grid's organ voxels (grown by one fusion voxel; background outside it), then the
    largest component per organ there: contours follow the probabilities between fusion voxels instead of
    their blocks. Returns (labels, the label values present)."""
    out = np.zeros(volume.shape, dtype=labels.dtype)
    organ = np.nonzero(labels)
    if not organ[0].size:
        return out, set()
    start, stop = [], []
    for a, idx in enumerate(organ):
        n, m = volume.shape[a], labels.shape[a]
        lo, hi = max(int(idx.min()) - 1, 0), min(int(idx.max()) + 2, m)   # fusion voxels [lo, hi)
        start.append(int(np.floor(lo * n / m)))                           # scan voxels whose centres lie there
        stop.append(min(n, int(np.ceil(hi * n / m))))
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    affine = np.asarray(volume.affine, float).copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    grid = Volume(np.broadcast_to(np.int16(0), tuple(b - a for a, b in zip(start, stop))), affine)
    fine = largest_components(fused.argmax_on_grid(grid), len(fused.classes))
    out[box] = fine
    return out, {int(v) for v in np.flatnonzero(np.bincount(fine.ravel()))}


def _shipped(engine) -> bool:
    """Whether an engine runs a model shipped in the package (the models QC_MIN_CONFIDENCE was fitted for)."""
    from ...modelcard import MODELS_DIR
    from ...qc import model_card

    card = model_card(engine)
    return card is not None and Path(card.path).resolve().parent == MODELS_DIR


def _body_region(engine) -> str | None:
    from ...qc import model_region

    return model_region(engine)
