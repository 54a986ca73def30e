"""Point queries and hierarchical segmentation with the sparse classifier.

Everything runs on the canonical (closest RAS+) version of the scan; label maps are mapped back to the
input's grid and orientation exactly (axis permutations and flips only, no resampling). A scan finer than the
card's `min_spacing_mm` (a clinical 0.8 x 0.8 x 1.5 mm neck CT against OpenKBP's ~4 x 4 x 2.5 mm) is first
taken to the card's `working_spacing_mm` (the working grid, each voxel the scan's voxel nearest its centre):
descriptor offsets then fall on voxels as they did in training, and the label map comes back to the scan's
voxels by nearest neighbour.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ... import components, geometry
from ...errors import InputError
from ...grid import GridMap, nearest_indices
from ...sampling.gather import KIND_F32, KIND_U8, CodeSampler, Sampler, contiguous_int16, hu_int16, make_sampler
from ...sampling.points import body_mask, body_steps, superior_axis
from ...volume import Volume
from ...segmentation import ClassProbabilities, Segmentation, labels_dtype
from ..base import ProgressFn, no_progress, organ_confidence, probabilities_to_input, require_finite, select_organs
from . import refine
from .click import ClickNet, nearest_voxels, top3
from .card import SegmentSettings
from .model import SparseModel

__all__ = ["PointResult", "PreparedScan", "SegmentSettings", "SparseEngine"]


SMALL_BATCH = 64  # fewer points than this (an interactive click) run single-threaded: see SparseEngine._model_for


RASTER_SORT_MIN = 64  # batches larger than this are gathered in memory order


@dataclass
class PreparedScan:
    """A scan ready for queries: canonical int16 HU array, its affine, the pattern's voxel offsets, and what the
    hot query path would otherwise recompute per call (the inverse affines, the descriptor sampler).

    `canonical` is the scan on its closest RAS+ axes, or, when `work` is set, on the coarser working grid over
    the same field of view (`work` maps it back to the canonical input grid)."""

    volume: Volume            # as given (for mapping results back)
    canonical: Volume         # int16 HU, closest RAS+ (the working grid, if any), C-contiguous
    canon: geometry.Canonical  # the map between the input grid and its canonical axes
    offsets_vox: np.ndarray
    sampler: Sampler | CodeSampler | None = field(default=None, repr=False)
    world_to_canonical: np.ndarray | None = field(default=None, repr=False)  # inverse of canonical.affine
    work: GridMap | None = field(default=None, repr=False)  # None: `canonical` is the input's own voxels
    _body: np.ndarray | None = field(default=None, repr=False)
    _body_coarse: np.ndarray | None = field(default=None, repr=False)

    def input_voxel_tables(self) -> list[np.ndarray]:
        """Per canonical axis, the voxel of `canonical` each voxel of the input's canonical grid falls in."""
        if self.work is None:
            return [np.arange(n) for n in self.canon.shape]
        return [nearest_indices(n_in, n) for n_in, n in zip(self.canon.shape, self.canonical.shape)]

    @property
    def work_zoom(self) -> np.ndarray:
        """Input voxels per `canonical` voxel along each canonical axis (1 without a working grid)."""
        return np.array(self.canon.shape, float) / np.array(self.canonical.shape, float)

    def box_to_input_canonical(self, start, stop) -> tuple[np.ndarray, np.ndarray]:
        """A box [start, stop) of `canonical` voxels as the box of input voxels on the canonical axes that it
        covers (the same box without a working grid)."""
        start, stop = np.asarray(start, int), np.asarray(stop, int)
        if self.work is None:
            return start, stop
        zoom = self.work_zoom
        return (np.floor(start * zoom).astype(int),
                np.minimum(np.ceil(stop * zoom).astype(int), self.canon.shape))

    def to_input_canonical_voxels(self, vox) -> np.ndarray:
        """Continuous voxel coordinates of `canonical` on the input's canonical grid."""
        vox = np.asarray(vox, float)
        if self.work is None:
            return vox
        return (vox + 0.5) * self.work_zoom - 0.5

    @property
    def ornt(self) -> np.ndarray:
        return self.canon.ornt

    @property
    def body_step(self) -> tuple[int, int, int]:
        """Voxel steps of the grid the body mask is computed on (see points.body_steps)."""
        return body_steps(self.canonical.spacing_mm)

    @property
    def body_coarse(self) -> np.ndarray:
        """The body mask on every body_step-th voxel (one value per cell of that grid)."""
        if self._body_coarse is None:
            sub = refine.grid_view(self.canonical.array, self.body_step)
            self._body_coarse = body_mask(sub, slice_axis=superior_axis(self.canonical.affine))
        return self._body_coarse

    def body_grid(self, step) -> np.ndarray:
        """The body mask at a level's grid points (cell lookup in the coarse mask)."""
        return refine.lookup(self.body_coarse, self.body_step, step, self.canonical.shape)

    @property
    def body(self) -> np.ndarray:
        """The body mask on every voxel of the canonical grid (expanded from the coarse one)."""
        if self._body is None:
            self._body = self.body_grid((1, 1, 1))
        return self._body


@dataclass(frozen=True)
class PointResult:
    """Per query point: label index, organ name, probability, top-3 (names, probabilities), voxel used."""

    labels: np.ndarray
    names: tuple[str, ...]
    probability: np.ndarray
    top3_names: tuple[tuple[str, ...], ...]
    top3_probability: np.ndarray
    voxels: np.ndarray
    probabilities: np.ndarray


class SparseEngine:
    name = "sparse"

    def __init__(self, model: "str | SparseModel | None" = None, *, threads: int | None = None,
                 settings: SegmentSettings | None = None):
        self.model = model if isinstance(model, SparseModel) else SparseModel.load(model, threads=threads)
        self.classes = self.model.classes
        self.settings = settings or self.model.card.segmentation
        self._one_thread: SparseModel | None = None
        self._click: ClickNet | None | bool = False  # False: not read yet (see _click_net)

    def _model_for(self, n: int) -> SparseModel:
        """The model to run n descriptors: below SMALL_BATCH a second, single-threaded session, because waking
        ONNX Runtime's thread pool for one descriptor costs more than the product itself (measured on 2 busy
        cores: 57 us with 1 thread vs 121 us with 2 for one point)."""
        if n >= SMALL_BATCH or self.model.threads == 1:
            return self.model
        if self._one_thread is None:
            self._one_thread = SparseModel(self.model.onnx_path, self.model.card, threads=1)
        return self._one_thread

    def _click_net(self) -> ClickNet | None:
        """The compiled few-point path (click.py), read from the model file on first use; None for a model whose
        graph it does not know (then every query runs through ONNX Runtime)."""
        if self._click is False:
            self._click = ClickNet.from_onnx(self.model.onnx_path) if self.model.input_kind == "codes" else None
        return self._click

    # ---- preparation -------------------------------------------------------------------------
    def prepare(self, volume: Volume) -> PreparedScan:
        """Canonical (RAS+) int16 copy of the scan, made by a tiled copy from the closest-RAS+ view of its memory
        (axis permutations and flips only), plus what every query needs precomputed. A scan finer than the
        card's `min_spacing_mm` along some axis is taken there to the working spacing first (`working_shape`)."""
        require_finite(volume)
        can = volume.canonical()
        card = self.model.card
        shape = working_shape(can, card.min_spacing_mm, card.working_spacing_mm)
        work = None
        if shape is None:
            view = can.view(hu_int16(volume.array))  # zero-copy view; the copy below is the tiled one
            canon = Volume(contiguous_int16(view), can.affine, dict(volume.meta))
        else:
            zoom = np.array(can.shape, float) / np.array(shape, float)
            work = GridMap(can, shape, geometry.scale_affine(can.affine, zoom))
            # the input voxel nearest each working voxel's centre: intensities as scanned, not interpolated (on 11
            # validation cases resampled to 0.8 x 0.8 x 1.5 mm: 0.697 mean Dice, against 0.686 anti-aliased and
            # 0.677 reading the fine grid itself)
            idx = [nearest_indices(n, m) for n, m in zip(shape, can.shape)]
            small = can.view(hu_int16(volume.array))[np.ix_(*idx)]
            canon = Volume(contiguous_int16(small), work.grid_affine, dict(volume.meta))
        offsets = self.model.pattern.offsets_vox(canon.affine)
        kind = KIND_U8 if self.model.input_kind == "codes" else KIND_F32
        return PreparedScan(volume, canon, can, offsets, make_sampler(canon.array, offsets, kind),
                            np.linalg.inv(canon.affine), work)

    def _as_prepared(self, scan) -> PreparedScan:
        return scan if isinstance(scan, PreparedScan) else self.prepare(scan)

    # ---- classification ----------------------------------------------------------------------
    def classify_voxels(self, scan: PreparedScan, centers_vox: np.ndarray, *, batch: int | None = None) -> np.ndarray:
        """Probabilities (N, C) at integer voxels of the canonical grid (which must lie inside it)."""
        centers = np.ascontiguousarray(np.asarray(centers_vox).reshape(-1, 3), dtype=np.int32)
        sampler = scan.sampler
        n = len(centers)
        click = self._click_net()
        if click is not None and n <= click.max_points and isinstance(sampler, CodeSampler):
            return click.probabilities(sampler, centers, self.model.logit_bias)
        batch = batch or self.settings.batch
        out = np.empty((n, len(self.classes)), dtype=np.float32)
        buf = np.empty((min(batch, max(n, 1)), len(sampler.offsets)), dtype=sampler.dtype)
        model = self._model_for(n)
        order = None
        if n > RASTER_SORT_MIN:
            # neighbouring descriptors share cache lines: gathering in memory order is much faster for scattered
            # points (grid points of a level already come in this order, so their sort is cheap)
            lin = np.ravel_multi_index(tuple(centers.T.astype(np.int64)), sampler.shape)
            order = np.argsort(lin, kind="stable")
            centers = centers[order]
        for s in range(0, n, batch):
            part = centers[s:s + batch]
            d = sampler(part, buf[:len(part)])
            out[s:s + len(part)] = model.predict(d)
        if order is not None:
            out[order] = out.copy()
        return out

    def query(self, scan, points, *, voxel: bool = False) -> PointResult:
        """Organ at each point: `points` in world mm (RAS), or voxel indices of the *input* grid if voxel=True."""
        scan = self._as_prepared(scan)
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        world = scan.volume.voxel_to_world(pts) if voxel else pts
        vox = np.empty(pts.shape, dtype=np.int32)
        bad = nearest_voxels(world, scan.world_to_canonical, scan.sampler.shape, vox)
        if bad >= 0:
            raise self._bad_point(scan, pts, world, voxel)
        probs = self.classify_voxels(scan, vox)
        order = np.empty((len(probs), 3), dtype=np.int64)
        top = np.empty((len(probs), 3), dtype=np.float32)
        top3(probs, order, top)
        classes = self.classes
        rows = order.tolist()
        return PointResult(order[:, 0], tuple(classes[r[0]] for r in rows), top[:, 0].copy(),
                           tuple((classes[r[0]], classes[r[1]], classes[r[2]]) for r in rows), top,
                           vox.astype(np.int64), probs)

    @staticmethod
    def _bad_point(scan: PreparedScan, pts: np.ndarray, world: np.ndarray, voxel: bool) -> InputError:
        """The error for query points that are not finite or fall outside the scan (the first one named)."""
        if not np.isfinite(pts).all():
            return InputError("Query points must be finite numbers (got NaN or infinity).")
        inv = scan.world_to_canonical
        vox = np.rint(world @ inv[:3, :3].T + inv[:3, 3])
        outside = np.any((vox < 0) | (vox >= scan.sampler.shape), axis=1)
        n_out = f"{int(outside.sum())} of {len(pts)} points are outside"
        if voxel:  # in the user's own units: voxels of the input grid
            bad, shape = pts[np.argmax(outside)], scan.volume.shape
            return InputError(f"Voxel ({', '.join(f'{v:g}' for v in bad)}) lies outside the scan, whose shape is "
                              f"{shape[0]} x {shape[1]} x {shape[2]} (indices 0..{shape[0] - 1}, "
                              f"0..{shape[1] - 1}, 0..{shape[2] - 1}); {n_out}.")
        bad = world[np.argmax(outside)]
        return InputError(f"Point ({bad[0]:.1f}, {bad[1]:.1f}, {bad[2]:.1f}) mm lies outside the scan ({n_out}).")

    # ---- segmentation ------------------------------------------------------------------------
    def segment(self, volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        """Coarse-to-fine label map. Everything before the last step works on the levels' grids (never the
        full voxel grid): a level starts from the previous one by cell lookup, classifies where neighbours
        disagree, then re-checks only around points whose label changed; the finest grid is cleaned (largest
        components) and expanded to voxels once, at the end.

        Beside the labels, each level keeps the probability of the class picked at each grid point (refined
        like the labels: a point not classified at a level keeps its coarser cell's), which gives each organ's
        confidence on the finest grid; with probabilities=True, the whole probability vector is kept the same
        way and returned on the finest level's grid."""
        progress = progress or no_progress
        wanted = select_organs(self.classes[1:], organs, self.name)
        t0 = time.perf_counter()
        scan, grid, step, picked, probs, timings = self._levels(volume, probabilities, progress)
        n_classes = len(self.classes)
        t = time.perf_counter()
        progress("clean-up", 0.95)
        if self.settings.largest_component:
            grid = components.largest_components(grid, n_classes)  # on the finest grid: same result as on voxels
        timings["components"] = time.perf_counter() - t
        t = time.perf_counter()
        out = np.empty(scan.volume.shape, dtype=grid.dtype)  # on the input's grid, in its orientation
        refine.expand_into(grid, step, scan.canon.view(out), scan.input_voxel_tables())
        timings["expand"] = time.perf_counter() - t
        progress("done", 1.0)
        out = scan.volume.with_array(out)
        names = {i: n for i, n in enumerate(self.classes) if i > 0}
        # every finest grid point's cell holds at least one voxel, so the organs on the grid are those of the map
        confidence = organ_confidence(grid, picked, names)
        class_probs = None if probs is None else self._class_probabilities(scan, probs, step)
        timings["total"] = time.perf_counter() - t0
        seg = Segmentation(out, names, timings, confidence, class_probs)
        return seg if organs is None else seg.keep(wanted)

    def class_probabilities(self, volume, *, progress: ProgressFn | None = None) -> ClassProbabilities:
        """What segment(probabilities=True) returns as its probabilities (the finest level's grid), without the
        clean-up and the label map on the scan's voxels (the ensemble fuses these)."""
        progress = progress or no_progress
        scan, _, step, _, probs, _ = self._levels(volume, True, progress)
        progress("done", 1.0)
        return self._class_probabilities(scan, probs, step)

    def _class_probabilities(self, scan: PreparedScan, probs: np.ndarray, step) -> ClassProbabilities:
        return probabilities_to_input(np.moveaxis(probs, -1, 0), level_affine(scan.canonical.affine, step),
                                      scan.canon, self.classes)

    def _levels(self, volume, probabilities: bool, progress: ProgressFn):
        """The coarse-to-fine levels: (prepared scan, finest grid's labels, its step in voxels, probability of the
        class picked at each point, the whole probability vectors (grid, class) or None, timings)."""
        t0 = time.perf_counter()
        scan = self._as_prepared(volume)
        shape = scan.canonical.shape
        scan.body_coarse  # noqa: B018 -- computed here so that it is timed as preparation
        timings = {"prepare": time.perf_counter() - t0}
        st = self.settings
        steps = refine.level_steps(scan.canonical.spacing_mm, st.levels_mm)
        n_classes = len(self.classes)
        dtype = labels_dtype(n_classes)
        grid = prev_step = picked = probs = None
        queried = 0
        for level, step in enumerate(steps):
            t = time.perf_counter()
            progress(f"level {level + 1}/{len(steps)} ({'x'.join(map(str, step))} voxels)",
                     0.95 * level / len(steps))
            body = scan.body_grid(step)
            seen = np.zeros(body.shape, dtype=bool)  # scratch of refine.edges_near
            if grid is None:
                grid = np.zeros(body.shape, dtype=dtype)
                picked = np.ones(body.shape, dtype=np.float32)  # outside the body: background, certain
                if probabilities:
                    probs = np.zeros((*body.shape, n_classes), dtype=np.float32)  # (grid, class): rows per point
                    probs[..., 0] = 1.0
                todo = np.argwhere(body)
            else:
                coarse, grid = grid, refine.refine_grid(grid, prev_step, step, shape)
                picked = refine.lookup(picked, prev_step, step, shape)
                if probs is not None:
                    probs = refine.lookup(probs, prev_step, step, shape)
                todo = refine.first_candidates(coarse, prev_step, grid, step, shape, body, seen)
            queried += self._sweeps(scan, grid, step, body, todo, seen, picked, probs)
            if st.majority:
                grid = refine.majority_smooth(grid, st.majority, n_classes)
            if level == 0 and st.largest_component and st.components_before_refinement:
                grid = components.largest_components(grid, n_classes)
            prev_step = step
            timings[f"level_{level + 1}"] = time.perf_counter() - t
        timings["points_classified"] = float(queried)
        return scan, grid, prev_step, picked, probs, timings

    def _sweeps(self, scan: PreparedScan, grid: np.ndarray, step, body: np.ndarray, todo: np.ndarray,
                seen: np.ndarray, picked: np.ndarray, kept: np.ndarray | None = None) -> int:
        """Classify `todo` (grid indices) into `grid`, then, while labels change, the body points next to a
        change that now sit on an edge and were not classified yet (an edge that the coarser level misplaced
        by more than one step is followed). The probability of the class picked goes into `picked`, and the
        whole probability vector into `kept` (grid, class) when it is kept. Returns the number of points
        classified."""
        allowed = body.copy()  # body points not classified yet at this level
        queried = 0
        for _ in range(self.settings.max_sweeps):
            if not len(todo):
                break
            probs = self.classify_voxels(scan, refine.grid_to_voxels(todo, step, scan.canonical.shape))
            where = tuple(todo.T)
            new = probs.argmax(1)
            picked[where] = probs[np.arange(len(new)), new]
            if kept is not None:
                kept[where] = probs
            new = new.astype(grid.dtype)
            changed = todo[grid[where] != new]
            grid[where] = new
            allowed[where] = False
            queried += len(todo)
            todo = refine.edges_near(grid, changed, allowed, seen)
        return queried


def working_shape(canonical: geometry.Canonical, min_spacing_mm, working_spacing_mm) -> tuple[int, int, int] | None:
    """The canonical shape of the working grid of a scan whose spacing falls below `min_spacing_mm` (canonical
    x, y, z) along some axis: each such axis taken to whole voxels of about `working_spacing_mm` over the same
    field of view, the others kept. None when no axis is finer (then the scan is used at its own voxels)."""
    if min_spacing_mm is None:
        return None
    sp = geometry.spacing_mm(canonical.affine)
    lo = np.asarray(min_spacing_mm, float)
    to = np.asarray(working_spacing_mm if working_spacing_mm is not None else min_spacing_mm, float)
    if np.all(sp >= lo * 0.99):  # within 1 %: rounding in a header is not a reason to resample
        return None
    n = np.asarray(canonical.shape)
    shape = np.where(sp < lo * 0.99, np.maximum(1, np.round(n * sp / to)), n).astype(int)
    return tuple(int(v) for v in shape)


def level_affine(canonical_affine: np.ndarray, step) -> np.ndarray:
    """Affine of a level's grid on the canonical axes: grid point g sits at canonical voxel g*step + step//2
    (refine.grid_points; the last point of a partial cell is clamped into the scan, which this ignores)."""
    step = np.asarray(step, dtype=float)
    out = np.array(canonical_affine, dtype=float)
    out[:3, :3] = canonical_affine[:3, :3] * step
    out[:3, 3] = geometry.voxel_to_world(canonical_affine, np.floor(step / 2))[0]
    return out
