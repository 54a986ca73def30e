"""Grid helpers of the coarse-to-fine segmentation. A level's grid samples the canonical voxel grid every
`step` voxels, starting at step // 2; each grid point stands for the cell [g*step, (g+1)*step)."""
from __future__ import annotations

import numba as nb
import numpy as np

MIN_LEVEL_RATIO = 4  # a refinement level must have at least this many times fewer grid points than the next


def level_steps(spacing_mm, levels_mm) -> list[tuple[int, int, int]]:
    """Voxel steps of each level, at least 1: the first level rounded, later levels rounded up (ceil: a grid
    step never finer than asked, e.g. 2 mm at 0.8 mm voxels is 3 voxels = 2.4 mm, not 2 = 1.6 mm, which would
    classify 1.5-2x more points per axis pair). Levels that would not be finer than the previous one are
    dropped; the last level is as fine as the finest requested spacing allows (1 voxel on 4.7 x 4.7 x 3 mm)."""
    sp = np.asarray(spacing_mm, dtype=float)
    steps: list[tuple[int, int, int]] = []
    for mm in levels_mm:
        ratio = mm / sp
        # ceil with a tolerance: 4 mm at 2 mm voxels stays 2 despite rounding error in the spacing
        s = tuple(int(max(1, round(r) if not steps else np.ceil(r - 1e-6))) for r in ratio)
        if not steps or (s != steps[-1] and all(a <= b for a, b in zip(s, steps[-1]))):
            steps.append(s)
    # an intermediate level with under 4x fewer points than the next one costs more than it saves (OpenKBP's
    # 4.7 x 4.7 x 3 mm voxels: 4 mm -> (1, 1, 2) before (1, 1, 1) classified 19 % more points, same Dice)
    keep = [s for i, s in enumerate(steps)
            if i in (0, len(steps) - 1) or np.prod(s) >= MIN_LEVEL_RATIO * np.prod(steps[i + 1])]
    return keep


def grid_shape(shape, step) -> tuple[int, int, int]:
    """Number of grid points per axis: ceil(n / s)."""
    return tuple(-(-int(n) // int(s)) for n, s in zip(shape, step))


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


def refine_grid(coarse: np.ndarray, coarse_step, step, shape) -> np.ndarray:
    """The next level's grid, each point holding the label of the coarse cell its voxel lies in: exactly
    grid_view(expand(coarse, coarse_step, shape), step), without building the full-resolution map."""
    return lookup(coarse, coarse_step, step, shape)


def lookup(mask: np.ndarray, mask_step, step, shape) -> np.ndarray:
    """Values of a coarse `mask` (one value per cell [m*ms, (m+1)*ms) of a grid of `shape`, e.g. the body mask
    computed every few mm) at a level's grid points: the value of the cell each point's voxel lies in."""
    idx = [np.minimum(grid_points(n, s) // ms, g - 1) for n, s, ms, g in zip(shape, step, mask_step, mask.shape)]
    return mask[np.ix_(*idx)]


@nb.njit(cache=True, nogil=True)
def _differs(grid, i, j, k):
    """True if the 3x3x3 neighbourhood of (i, j, k) (clipped at the borders) holds another label."""
    n0, n1, n2 = grid.shape
    v = grid[i, j, k]
    for a in range(max(i - 1, 0), min(i + 2, n0)):
        for b in range(max(j - 1, 0), min(j + 2, n1)):
            for c in range(max(k - 1, 0), min(k + 2, n2)):
                if grid[a, b, c] != v:
                    return True
    return False


@nb.njit(cache=True, nogil=True)
def _disagreement(grid, out):
    # serial: ~10-30 ms on a working grid, where a parallel kernel costs ~0.7 s more to compile on first use
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            for k in range(grid.shape[2]):
                out[i, j, k] = _differs(grid, i, j, k)


@nb.njit(cache=True, nogil=True)
def _expand_into(grid, t0, t1, t2, starts, out):
    """out[i, j, k] = grid[t0[i], t1[j], t2[k]]. Where the tables repeat (a finer output grid: ~5 input voxels per
    working voxel in-plane on a 0.8 mm scan) the planes and rows repeat too, and are copied whole instead of
    looked up voxel by voxel (0.32 s -> ~0.01 s for a 512 x 512 x 300 map, memory-bound: serial, as a parallel
    kernel would cost ~1 s more to compile on first use). `starts`: the first index of each run of equal t0 values,
    then out.shape[0]."""
    n1, n2 = out.shape[1], out.shape[2]
    for r in range(starts.shape[0] - 1):
        i0 = starts[r]
        g = grid[t0[i0]]
        for j in range(n1):
            if j > 0 and t1[j] == t1[j - 1]:
                for k in range(n2):  # explicit loops: numba's slice assignment costs seconds to compile
                    out[i0, j, k] = out[i0, j - 1, k]
            else:
                row = g[t1[j]]
                for k in range(n2):
                    out[i0, j, k] = row[t2[k]]
        for i in range(i0 + 1, starts[r + 1]):
            for j in range(n1):
                for k in range(n2):
                    out[i, j, k] = out[i0, j, k]


def expand_into(grid: np.ndarray, step, out: np.ndarray, voxel_of=None) -> np.ndarray:
    """`expand` written into `out` (any strided view, e.g. the canonical view of a label array in the input's
    orientation), so the full-resolution map is built once, in place, with no reorienting copy afterwards.
    `voxel_of`: per axis, the voxel of the level's voxel grid each index of `out` falls in, when `out` is a finer
    grid over the same field of view (the sparse engine's working grid, coarser than the scan: nearest neighbour
    through both grids in one pass); None: `out` is that voxel grid."""
    if voxel_of is None:
        voxel_of = [np.arange(n) for n in out.shape]
    tables = [np.minimum(np.asarray(v) // s, g - 1) for v, s, g in zip(voxel_of, step, grid.shape)]
    if out.shape[0] == 0:
        return out
    starts = np.concatenate([[0], np.flatnonzero(np.diff(tables[0])) + 1, [out.shape[0]]]).astype(np.int64)
    _expand_into(np.ascontiguousarray(grid), *tables, starts, out)
    return out


def disagreement(grid: np.ndarray) -> np.ndarray:
    """Grid points whose 3x3x3 neighbourhood holds more than one label (the borders replicate, like scipy's
    max != min filter with mode="nearest", which this replaces: one pass that stops at the first difference)."""
    out = np.empty(grid.shape, dtype=bool)
    _disagreement(np.ascontiguousarray(grid), out)
    return out


@nb.njit(cache=True, nogil=True)
def _edges_near(grid, points, allowed, seen):
    """Points that are 26-neighbours of `points` (or the points themselves), `allowed`, and on an edge; each
    reported once (`seen` is scratch, left cleared)."""
    n0, n1, n2 = grid.shape
    out = np.empty((min(points.shape[0] * 27, grid.size), 3), np.int64)
    m = 0
    for p in range(points.shape[0]):
        i, j, k = points[p, 0], points[p, 1], points[p, 2]
        for a in range(max(i - 1, 0), min(i + 2, n0)):
            for b in range(max(j - 1, 0), min(j + 2, n1)):
                for c in range(max(k - 1, 0), min(k + 2, n2)):
                    if allowed[a, b, c] and not seen[a, b, c]:
                        seen[a, b, c] = True
                        if _differs(grid, a, b, c):
                            out[m, 0], out[m, 1], out[m, 2] = a, b, c
                            m += 1
    for p in range(points.shape[0]):  # clear the scratch marks
        i, j, k = points[p, 0], points[p, 1], points[p, 2]
        for a in range(max(i - 1, 0), min(i + 2, n0)):
            for b in range(max(j - 1, 0), min(j + 2, n1)):
                for c in range(max(k - 1, 0), min(k + 2, n2)):
                    seen[a, b, c] = False
    return out[:m]


def edges_near(grid: np.ndarray, points: np.ndarray, allowed: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Grid indices (N, 3), raster order, of the `allowed` points on a label edge within one step of `points`.
    A point's disagreement can only change when a neighbour's label changes, so after a sweep only the
    neighbours of changed points need checking (instead of filtering the whole grid again)."""
    if not len(points):
        return np.empty((0, 3), np.int64)
    idx = _edges_near(grid, np.ascontiguousarray(points, dtype=np.int64), allowed, seen)
    return idx[np.lexsort((idx[:, 2], idx[:, 1], idx[:, 0]))]  # raster order: memory locality in the gather


def first_candidates(coarse: np.ndarray, coarse_step, grid: np.ndarray, step, shape, allowed: np.ndarray,
                     seen: np.ndarray) -> np.ndarray:
    """Edge points of a freshly refined grid. A fine point can only see two labels if its coarse cell does
    (fine steps are at most the coarse ones), so only the fine points inside coarse edge cells are checked."""
    coarse_edges = np.argwhere(disagreement(coarse))
    if not len(coarse_edges):
        return np.empty((0, 3), np.int64)
    # fine grid points of each coarse edge cell: per axis, the fine indices whose voxel falls in the cell
    cell_of = [np.minimum(grid_points(n, s) // cs, g - 1)
               for n, s, cs, g in zip(shape, step, coarse_step, coarse.shape)]
    in_edge = np.zeros(coarse.shape, dtype=bool)
    in_edge[tuple(coarse_edges.T)] = True
    cand = in_edge[np.ix_(*cell_of)] & allowed
    pts = np.argwhere(cand)
    keep = _edge_flags(grid, pts)
    return pts[keep]


@nb.njit(cache=True, nogil=True)
def _edge_flags(grid, points):
    out = np.empty(points.shape[0], np.bool_)
    for p in range(points.shape[0]):
        out[p] = _differs(grid, points[p, 0], points[p, 1], points[p, 2])
    return out


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
