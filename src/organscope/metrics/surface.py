"""Surface distances computed once, then HD95, NSD and mean surface distance derived from them.

Conventions (tested):
- A surface voxel is a mask voxel with at least one of its 6 face neighbours outside the mask
  (mask minus its erosion by the 6-connected cross; the array border counts as outside).
- Distances are between voxel centres, in mm (`distance_transform_edt` with `sampling=spacing_mm`),
  from each surface voxel of one mask to the nearest surface voxel of the other.
- Both masks empty -> every metric is NaN (organ absent from both: not scored).
  Exactly one empty -> hd95 and mean distance are inf, nsd is 0.0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .overlap import _as_masks


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed distances (mm) of each surface voxel to the other mask's surface."""

    pred_to_ref_mm: np.ndarray
    ref_to_pred_mm: np.ndarray
    pred_empty: bool
    ref_empty: bool

    def _degenerate(self, one_empty: float) -> float | None:
        if self.pred_empty and self.ref_empty:
            return float("nan")
        if self.pred_empty or self.ref_empty:
            return one_empty
        return None

    def hd95(self) -> float:
        """95th percentile Hausdorff distance in mm: max of the two directed 95th percentiles
        (numpy's linear percentile), as in DeepMind's surface-distance and MONAI."""
        bad = self._degenerate(float("inf"))
        if bad is not None:
            return bad
        return float(max(np.percentile(self.pred_to_ref_mm, 95), np.percentile(self.ref_to_pred_mm, 95)))

    def hausdorff(self) -> float:
        """Maximum surface distance in mm."""
        bad = self._degenerate(float("inf"))
        if bad is not None:
            return bad
        return float(max(self.pred_to_ref_mm.max(), self.ref_to_pred_mm.max()))

    def nsd(self, tolerance_mm: float) -> float:
        """Normalised surface Dice (Nikolov et al. 2021) at `tolerance_mm`: the fraction of both surfaces
        lying within the tolerance (distance <= tolerance) of the other; surface voxels are counted,
        not weighted by surfel area."""
        if tolerance_mm < 0:
            raise InputError(f"The NSD tolerance must be >= 0 mm, got {tolerance_mm}.")
        bad = self._degenerate(0.0)
        if bad is not None:
            return bad
        within = np.count_nonzero(self.pred_to_ref_mm <= tolerance_mm) + np.count_nonzero(
            self.ref_to_pred_mm <= tolerance_mm)
        return float(within / (self.pred_to_ref_mm.size + self.ref_to_pred_mm.size))

    def mean_surface_distance(self) -> float:
        """Average symmetric surface distance in mm: mean over the surface voxels of both masks."""
        bad = self._degenerate(float("inf"))
        if bad is not None:
            return bad
        total = self.pred_to_ref_mm.sum() + self.ref_to_pred_mm.sum()
        return float(total / (self.pred_to_ref_mm.size + self.ref_to_pred_mm.size))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a mask: voxels with a face neighbour (6-connectivity in 3D) outside it."""
    m = np.asarray(mask, dtype=bool)
    cross = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=cross, border_value=0)


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_mm) -> SurfaceDistances:
    """Surface distances of two same-shaped masks on a grid with the given voxel size (mm per axis).

    The work is done inside the union bounding box plus one voxel, which holds every surface voxel,
    so the result equals that of the full grid.
    """
    p, r = _as_masks(pred_mask, ref_mask)
    sampling = _check_spacing(spacing_mm, p.ndim)
    box = union_box(p, r, margin=1)
    empty = np.zeros(0)
    if box is None:
        return SurfaceDistances(empty, empty, True, True)
    p, r = p[box], r[box]
    p_empty, r_empty = not p.any(), not r.any()
    if p_empty or r_empty:
        return SurfaceDistances(empty, empty, p_empty, r_empty)
    sp, sr = surface_voxels(p), surface_voxels(r)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return SurfaceDistances(to_ref[sp], to_pred[sr], False, False)


def union_box(a: np.ndarray, b: np.ndarray, *, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of a | b grown by `margin` voxels (clipped), or None if both are empty."""
    box = []
    for axis in range(a.ndim):
        others = tuple(i for i in range(a.ndim) if i != axis)
        hit = np.flatnonzero(a.any(axis=others) | b.any(axis=others))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, a.shape[axis])))
    return tuple(box)


def _check_spacing(spacing_mm, ndim: int) -> np.ndarray:
    if spacing_mm is None:
        raise InputError("Surface distances need the voxel spacing in mm; pass spacing_mm explicitly.")
    sp = np.asarray(spacing_mm, dtype=float).ravel()
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing_mm must be {ndim} positive numbers (mm per axis), got {list(sp)}.")
    return sp
