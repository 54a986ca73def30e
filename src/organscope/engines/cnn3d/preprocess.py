"""cnn3d preprocessing: the whole scan on one fixed canonical grid, two CT windows as channels, and back.

The paper resamples every scan to 96x192x192 whatever its size (scale invariance from one field of view).
organscope's real data (OpenKBP head-and-neck) was already resampled by its authors to 128x128x128 whole-scan
grids at 3.5-5.1 mm in-plane and 2-3 mm between slices, so the fixed grid is 128^3 on the canonical RAS+ axes:
OpenKBP scans map onto it with no interpolation at all (labels stay exact for training and for scoring), and a
clinical 512x512x300 scan at 0.8x0.8x1.5 mm lands at ~3.3x3.3x3.5 mm, the resolution the model was trained at.

Resampling down uses a separable triangle filter whose width follows the zoom (anti-aliasing, as the paper's
in-plane Gaussian), compiled with numba; the paper's 3rd-order spline is replaced by this linear filter, which
costs a fraction and is what any zoom-out of 4x reduces to anyway. Labels go back to the input grid by nearest
neighbour, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ...geometry import scale_affine
from ...volume import Volume

GRID = (128, 128, 128)

# (level, width) in HU. Soft tissue for the brainstem, cord, parotids and oesophagus wall; a wide window from
# air to bone for the mandible, the spinal canal and the larynx's airway.
WINDOWS_HU = ((40.0, 400.0), (300.0, 2000.0))
BODY_THRESHOLD_HU = -200.0


@dataclass(frozen=True)
class GridMap:
    """How the canonical input grid maps onto the fixed network grid (for the way back)."""

    canonical_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    ornt: np.ndarray
    grid_affine: np.ndarray

    @property
    def identity(self) -> bool:
        return self.canonical_shape == self.grid_shape


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output voxel, input indices and weights of the triangle filter (width = max(1, zoom))."""
    zoom = n_in / n_out
    support = max(1.0, zoom)
    centre = (np.arange(n_out) + 0.5) * zoom - 0.5
    radius = int(np.ceil(support))
    offs = np.arange(-radius, radius + 1)
    idx = np.floor(centre)[:, None].astype(np.int64) + offs[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(idx - centre[:, None]) / support)
    w[(idx < 0) | (idx >= n_in)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


@numba.njit(parallel=True, cache=True)
def _resample_first_axis(src, idx, w):
    n_out, n_tap = idx.shape
    rest = src.shape[1]
    out = np.zeros((n_out, rest), dtype=np.float32)
    for o in numba.prange(n_out):
        for t in range(n_tap):
            wt = w[o, t]
            if wt == 0.0:
                continue
            row = src[idx[o, t]]
            for r in range(rest):
                out[o, r] += wt * row[r]
    return out


def resample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Anti-aliased linear resampling of a 3D array to `shape`, same field of view (voxel edges aligned)."""
    out = np.ascontiguousarray(array, dtype=np.float32)
    # the axis that shrinks most goes first, so later passes touch fewer voxels
    order = np.argsort([n_out / n_in for n_in, n_out in zip(out.shape, shape)])
    for ax in order:
        n_in, n_out = out.shape[ax], shape[ax]
        if n_in == n_out:
            continue
        idx, w = _taps(n_in, n_out)
        moved = np.moveaxis(out, ax, 0)
        flat = np.ascontiguousarray(moved).reshape(n_in, -1)
        res = _resample_first_axis(flat, idx, w).reshape((n_out,) + moved.shape[1:])
        out = np.ascontiguousarray(np.moveaxis(res, 0, ax))
    return out


def to_grid(volume: Volume, grid: tuple[int, int, int] = GRID) -> tuple[np.ndarray, GridMap]:
    """HU on the fixed canonical grid (float32) and the map back to the input's grid."""
    canon, ornt = volume.to_canonical()
    zoom = np.array(canon.shape, dtype=float) / np.array(grid, dtype=float)
    gmap = GridMap(tuple(canon.shape), tuple(grid), ornt, scale_affine(canon.affine, zoom))
    hu = np.asarray(canon.array, dtype=np.float32) if gmap.identity else resample(canon.array, grid)
    return hu, gmap


def windows(hu: np.ndarray) -> np.ndarray:
    """(2, *grid) float32 in [0, 1]: one channel per CT window (WINDOWS_HU)."""
    out = np.empty((len(WINDOWS_HU),) + hu.shape, dtype=np.float32)
    for c, (level, width) in enumerate(WINDOWS_HU):
        np.clip((hu - (level - width / 2)) / width, 0.0, 1.0, out=out[c])
    return out


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """For each voxel of an axis of n_in voxels, the voxel of the n_out grid whose cell contains its centre."""
    return np.minimum(((np.arange(n_in) + 0.5) * (n_out / n_in)).astype(np.int64), n_out - 1)


def from_grid(labels_grid: np.ndarray, gmap: GridMap, volume: Volume) -> Volume:
    """Label map on the fixed grid -> label Volume on the input's own grid and orientation (nearest)."""
    if gmap.identity:
        canon = labels_grid
    else:
        i, j, k = (nearest_indices(n, g) for n, g in zip(gmap.canonical_shape, gmap.grid_shape))
        canon = labels_grid[np.ix_(i, j, k)]
    return volume.from_canonical(np.ascontiguousarray(canon), gmap.ornt)
