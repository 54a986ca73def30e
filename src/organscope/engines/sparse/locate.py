"""The sparse classifier's coarse grid as an organ localiser: classify the body points of one ~8 mm grid
(the first level of the sparse engine's segmentation), keep each organ's largest connected group of grid
points, and report its box (grown by one grid step, since a grid point stands for its whole cell and thin
organ ends fall between points), its centroid and its mean probability."""
from __future__ import annotations

import time

import numpy as np

from ...components import BRIDGE_STEPS, bridged_largest_components
from ...localize.boxes import OrganLocation, location
from ...localize.organ_sizes import organ_sizes
from ...volume import Volume
from . import refine


#: an organ whose grid points have a mean probability below this is reported absent (on the 33 OpenKBP validation
#: scans every organ present scored 0.7 or more; a scan cut below the larynx gave brainstem points at 0.56)
MIN_CONFIDENCE = 0.65
#: ... and one whose grid cells add up to less than this fraction of the training set's 5th-percentile volume
#: is absent too (a scan cut below the larynx gave a 'mandible' of a few cells at a clavicle, probability 0.78)
MIN_VOLUME_FRACTION = 0.5


def locate(volume: Volume, *, engine=None, level_mm: float = 8.0, grow_steps: float = 1.0,
           min_confidence: float = MIN_CONFIDENCE, min_volume_fraction: float = MIN_VOLUME_FRACTION,
           timings: dict | None = None) -> dict[str, OrganLocation]:
    """Per organ of the sparse model: present (mean probability >= min_confidence and at least
    min_volume_fraction of the training set's 5th-percentile volume), centroid, box and confidence."""
    from .engine import SparseEngine

    t0 = time.perf_counter()
    eng = engine or SparseEngine()
    scan = eng.prepare(volume)
    shape = scan.canonical.shape
    step = refine.level_steps(scan.canonical.spacing_mm, (level_mm,))[0]
    body = scan.body_grid(step)
    todo = np.argwhere(body)
    n_classes = len(eng.classes)
    grid = np.zeros(body.shape, dtype=np.uint8)
    probs = np.zeros((0, n_classes), np.float32)
    if len(todo):
        probs = eng.classify_voxels(scan, refine.grid_to_voxels(todo, step, shape))
        grid[tuple(todo.T)] = probs.argmax(1)
    grid = bridged_largest_components(grid, n_classes, BRIDGE_STEPS)
    out = {}
    step_a = np.array(step)
    cell_ml = float(np.prod(step_a * scan.canonical.spacing_mm)) / 1000
    sizes = organ_sizes()
    for c, name in enumerate(eng.classes):
        if c == 0:
            continue
        pts = np.argwhere(grid == c)
        if not len(pts):
            out[name] = OrganLocation(name, False)
            continue
        conf = float(probs[grid[tuple(todo.T)] == c, c].mean())
        small = len(pts) * cell_ml < min_volume_fraction * sizes.get(name, {}).get("volume_ml_p5", 0.0)
        if conf < min_confidence or small:
            out[name] = OrganLocation(name, False, confidence=conf)
            continue
        vox = refine.grid_to_voxels(pts, step, shape)
        grow = np.ceil(grow_steps * step_a).astype(int)
        start = np.maximum(pts.min(0) * step_a - grow, 0)
        stop = np.minimum((pts.max(0) + 1) * step_a + grow, shape)
        start, stop = scan.box_to_input_canonical(start, stop)  # on the input's voxels (from a working grid)
        centroid = scan.to_input_canonical_voxels(vox.mean(0))
        out[name] = location(name, start, stop, centroid, conf, scan.canon)
    if timings is not None:
        timings["total"] = time.perf_counter() - t0
        timings["points_classified"] = float(len(todo))
    return out


class SparseGridLocalizer:
    """`locate` with one sparse engine kept for every call (loaded on the first), for engines that localise
    with it (slice2d, cascade: the engine registry hands it to them); `hu` and `gmap` are accepted for the same
    signature as localize.heatmap.HeatmapLocalizer."""

    name = "sparse_grid"

    def __init__(self, *, threads: int | None = None, level_mm: float = 8.0):
        self.threads = threads
        self.level_mm = level_mm
        self._engine = None

    def locate(self, volume: Volume, *, timings: dict | None = None, hu=None, gmap=None) -> dict[str, OrganLocation]:
        if self._engine is None:
            from .engine import SparseEngine

            self._engine = SparseEngine(threads=self.threads)
        return locate(volume, engine=self._engine, timings=timings, level_mm=self.level_mm)
