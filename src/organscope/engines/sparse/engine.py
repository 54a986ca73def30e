"""Point queries and hierarchical segmentation with the sparse classifier.

Everything runs on the canonical (closest RAS+) version of the scan; label maps are mapped back to the
input's grid and orientation exactly (axis permutations and flips only, no resampling).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import numpy as np
from ...errors import InputError, ModelError
from ...sampling.gather import as_hu_int16, gather, gather_u8
from ...sampling.points import body_mask
from ...volume import Volume
from ..base import ProgressFn, Segmentation, labels_dtype, no_progress
from . import refine
from .model import SparseModel


@dataclass(frozen=True)
class SegmentSettings:
    """Coarse-to-fine schedule: grid spacings in mm (the paper: 8 -> 4 -> 2 mm; a level finer than the scan's
    voxels is skipped), the paper's majority smoothing (a voxel takes a label held by >= `majority` of its 27
    neighbours; 0 = off), clean-up by the largest connected component per organ, before refinement too.
    At each level, classification sweeps repeat (at most `max_sweeps`) while newly classified points reveal new
    disagreements, so an edge that the coarser level misplaced by more than one grid step is still found."""

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    majority: int = 20
    largest_component: bool = True
    components_before_refinement: bool = True
    batch: int = 2048
    max_sweeps: int = 8


def settings_from_card(card: dict) -> SegmentSettings:
    given = dict(card.get("segmentation", {}))
    known = {f.name for f in fields(SegmentSettings)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ModelError(f"The model card's segmentation settings hold unknown keys {unknown}; "
                         f"known: {sorted(known)}.")
    if "levels_mm" in given:
        given["levels_mm"] = tuple(given["levels_mm"])
    return SegmentSettings(**given)


@dataclass
class PreparedScan:
    """A scan ready for queries: canonical int16 HU array, its affine, the pattern's voxel offsets."""

    volume: Volume            # as given (for mapping results back)
    canonical: Volume         # int16 HU, closest RAS+
    ornt: np.ndarray
    offsets_vox: np.ndarray
    _body: np.ndarray | None = field(default=None, repr=False)

    @property
    def body(self) -> np.ndarray:
        if self._body is None:
            self._body = body_mask(self.canonical.array)
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
        self.settings = settings or settings_from_card(self.model.card)

    # ---- preparation -------------------------------------------------------------------------
    def prepare(self, volume: Volume) -> PreparedScan:
        if np.issubdtype(volume.array.dtype, np.floating) and not np.all(np.isfinite(volume.array)):
            raise InputError("The scan contains NaN or infinite values; organscope needs finite HU values.")
        canon, ornt = volume.to_canonical()
        canon = Volume(as_hu_int16(canon.array), canon.affine, canon.meta)
        return PreparedScan(volume, canon, ornt, self.model.pattern.offsets_vox(canon.affine))

    def _as_prepared(self, scan) -> PreparedScan:
        return scan if isinstance(scan, PreparedScan) else self.prepare(scan)

    # ---- classification ----------------------------------------------------------------------
    def classify_voxels(self, scan: PreparedScan, centers_vox: np.ndarray, *, batch: int | None = None) -> np.ndarray:
        """Probabilities (N, C) at integer voxels of the canonical grid."""
        centers = np.asarray(centers_vox, dtype=np.int32).reshape(-1, 3)
        batch = batch or self.settings.batch
        out = np.empty((len(centers), len(self.classes)), dtype=np.float32)
        codes = self.model.input_kind == "codes"
        fn = gather_u8 if codes else gather
        buf = np.empty((min(batch, max(len(centers), 1)), len(scan.offsets_vox)), dtype=np.uint8 if codes else np.float32)
        for s in range(0, len(centers), batch):
            part = centers[s:s + batch]
            d = fn(scan.canonical.array, part, scan.offsets_vox, out=buf[:len(part)])
            out[s:s + len(part)] = self.model.predict(d)
        return out

    def query(self, scan, points, *, voxel: bool = False) -> PointResult:
        """Organ at each point: `points` in world mm (RAS), or voxel indices of the *input* grid if voxel=True."""
        scan = self._as_prepared(scan)
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        if not np.all(np.isfinite(pts)):
            raise InputError("Query points must be finite numbers (got NaN or infinity).")
        world = scan.volume.voxel_to_world(pts) if voxel else pts
        vox = np.rint(scan.canonical.world_to_voxel(world)).astype(np.int64)
        outside = np.any((vox < 0) | (vox >= np.array(scan.canonical.shape)), axis=1)
        if outside.any():
            bad = world[np.argmax(outside)]
            raise InputError(f"Point ({bad[0]:.1f}, {bad[1]:.1f}, {bad[2]:.1f}) mm lies outside the scan "
                             f"({int(outside.sum())} of {len(pts)} points are outside).")
        probs = self.classify_voxels(scan, vox)
        order = np.argsort(-probs, axis=1)[:, :3]
        labels = order[:, 0]
        names = tuple(self.classes[i] for i in labels)
        return PointResult(labels, names, probs[np.arange(len(probs)), labels],
                           tuple(tuple(self.classes[i] for i in row) for row in order),
                           np.take_along_axis(probs, order, axis=1), vox, probs)

    # ---- segmentation ------------------------------------------------------------------------
    def segment(self, volume, *, progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        t0 = time.perf_counter()
        scan = self._as_prepared(volume)
        body = scan.body
        timings = {"prepare": time.perf_counter() - t0}
        st = self.settings
        steps = refine.level_steps(scan.canonical.spacing_mm, st.levels_mm)
        n_classes = len(self.classes)
        labels = np.zeros(scan.canonical.shape, dtype=labels_dtype(n_classes))
        queried = 0
        for level, step in enumerate(steps):
            t = time.perf_counter()
            progress(f"level {level + 1}/{len(steps)} ({'x'.join(map(str, step))} voxels)", level / len(steps))
            grid = refine.grid_view(labels, step)
            body_grid = refine.grid_view(body, step)
            done = np.zeros(grid.shape, dtype=bool)
            todo = body_grid.copy() if level == 0 else refine.disagreement(grid) & body_grid
            for _ in range(st.max_sweeps):
                # classify where neighbours disagree; an edge that moves exposes new disagreements next sweep
                idx = np.argwhere(todo)
                if not len(idx):
                    break
                probs = self.classify_voxels(scan, refine.grid_to_voxels(idx, step, labels.shape))
                grid[tuple(idx.T)] = probs.argmax(1)
                done[tuple(idx.T)] = True
                queried += len(idx)
                todo = refine.disagreement(grid) & body_grid & ~done
            if st.majority:
                grid = refine.majority_smooth(grid, st.majority)
            if level == 0 and st.largest_component and st.components_before_refinement:
                grid = refine.largest_components(grid, n_classes)
            labels = refine.expand(grid, step, labels.shape)
            timings[f"level_{level + 1}"] = time.perf_counter() - t
        if st.largest_component:
            t = time.perf_counter()
            labels = refine.largest_components(labels, n_classes)
            timings["components"] = time.perf_counter() - t
        progress("done", 1.0)
        out = scan.volume.from_canonical(labels, scan.ornt)
        timings["total"] = time.perf_counter() - t0
        timings["points_classified"] = float(queried)
        return Segmentation(out, {i: n for i, n in enumerate(self.classes) if i > 0}, timings)
