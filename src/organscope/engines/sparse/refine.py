"""Grid helpers of the coarse-to-fine segmentation. A level's grid samples the canonical voxel grid every
`step` voxels, starting at step // 2; each grid point stands for the cell [g*step, (g+1)*step)."""
from __future__ import annotations

import numba as nb
import numpy as np
from scipy import ndimage


def level_steps(spacing_mm, levels_mm) -> list[tuple[int, int, int]]:
    """Voxel steps of each level (rounded, at least 1); levels that would not be finer than the previous
    one are dropped, and the last level is as fine as the finest requested spacing allows."""
    sp = np.asarray(spacing_mm, dtype=float)
    steps: list[tuple[int, int, int]] = []
    for mm in levels_mm:
        s = tuple(int(max(1, round(mm / v))) for v in sp)
        if not steps or (s != steps[-1] and all(a <= b for a, b in zip(s, steps[-1]))):
            steps.append(s)
    return steps


def grid_points(n: int, s: int) -> np.ndarray:
    """Voxel index of each grid point along an axis of length n: g*s + s//2, clamped into the axis so that a
    last partial cell still has a point. There are ceil(n / s) of them."""
    return np.minimum(np.arange(-(-n // s)) * s + s // 2, n - 1)


def grid_view(arr: np.ndarray, step) -> np.ndarray:
    """The values of `arr` at a level's grid points (a copy)."""
    return arr[np.ix_(*(grid_points(n, s) for n, s in zip(arr.shape, step)))]


def grid_to_voxels(idx: np.ndarray, step, shape) -> np.ndarray:
    """Voxel indices (N, 3) of grid indices (N, 3)."""
    return np.stack([grid_points(n, s)[idx[:, a]] for a, (n, s) in enumerate(zip(shape, step))], axis=1).astype(np.int32)


def expand(grid: np.ndarray, step, shape) -> np.ndarray:
    """Fill every cell [g*s, (g+1)*s) with its grid point's label (nearest neighbour), cropped to `shape`.
    With an even step the grid point sits half a voxel past the cell's centre (a limit of integer grids; the
    last level, at the finest step, decides the edges)."""
    out = grid
    for ax, s in enumerate(step):
        if s > 1:
            out = np.repeat(out, s, axis=ax)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]])


def disagreement(grid: np.ndarray) -> np.ndarray:
    """Grid points whose 3x3x3 neighbourhood holds more than one label."""
    return ndimage.maximum_filter(grid, size=3, mode="nearest") != ndimage.minimum_filter(grid, size=3, mode="nearest")


@nb.njit(cache=True, nogil=True)
def _majority(grid, idx, threshold, n_classes):
    out = grid.copy()
    n0, n1, n2 = grid.shape
    counts = np.zeros(n_classes, np.int32)
    for p in range(idx.shape[0]):
        i, j, k = idx[p, 0], idx[p, 1], idx[p, 2]
        counts[:] = 0
        for a in range(max(i - 1, 0), min(i + 2, n0)):
            for b in range(max(j - 1, 0), min(j + 2, n1)):
                for c in range(max(k - 1, 0), min(k + 2, n2)):
                    counts[grid[a, b, c]] += 1
        best = np.argmax(counts)
        if counts[best] >= threshold:
            out[i, j, k] = best
    return out


def majority_smooth(grid: np.ndarray, threshold: int, n_classes: int | None = None) -> np.ndarray:
    """The paper's smoothing: a grid point takes the label held by >= threshold of its 27 neighbours
    (itself included). Only points on label edges can change, so only those are visited."""
    idx = np.argwhere(disagreement(grid)).astype(np.int64)
    if not len(idx):
        return grid
    n = int(n_classes or (int(grid.max()) + 1))
    return _majority(np.ascontiguousarray(grid), idx, threshold, n)


def largest_components(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Keep the largest 26-connected component of every organ label; the rest becomes background."""
    out = labels.copy()
    boxes = ndimage.find_objects(labels, max_label=n_classes - 1)
    struct = np.ones((3, 3, 3), dtype=bool)
    for c, box in enumerate(boxes, start=1):
        if box is None:
            continue
        sub = out[box]
        comp, n = ndimage.label(sub == c, structure=struct)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            sub[(comp != np.argmax(sizes)) & (comp > 0)] = 0
    return out
