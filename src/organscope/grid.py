"""Resampling between a scan's own grid and a fixed network grid, and back: the one grid module of the engines
(cnn3d, cascade, slice2d), the heat-map localiser and the training code.

`resample` is an anti-aliased linear (triangle-filter) resampling whose width follows the zoom (the papers' in-plane
Gaussian or 3rd-order spline cost a multiple and reduce to this at a 4x zoom-out), compiled with numba. `to_grid`
puts a scan on a grid given as an argument over its whole field of view on the canonical RAS+ axes, and `from_grid`
brings a label map back by nearest neighbour onto the input's grid and orientation.

`to_spacing` is the physical-scale path (issue 13): the scan at a spacing in mm (a model card's `spacing_mm`, per
axis fixed or a [lo, hi] range), padded with air to at least the network's grid or tiled by it with overlap
(`run_tiled` merges the tiles' outputs), and `from_spacing` the way back, so organ scale no longer follows the
field of view.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .geometry import Canonical, crop_affine, scale_affine
from .volume import Volume


@dataclass(frozen=True)
class GridMap:
    """How the canonical input grid maps onto a fixed grid (for the way back)."""

    canonical: Canonical
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return self.canonical.shape

    @property
    def canonical_affine(self) -> np.ndarray:
        return self.canonical.affine

    @property
    def ornt(self) -> np.ndarray:
        return self.canonical.ornt

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


# The output arrays are allocated (zeroed) by the caller: an np.zeros inside a parallel kernel becomes a parfor
# of its own, and the three kernels took ~2 s each to compile on first use.
@numba.njit(parallel=True, cache=True)
def _resample_axis0(src, idx, w, out):
    n_out, n_tap = idx.shape
    for o in numba.prange(n_out):
        for t in range(n_tap):
            wt = np.float32(w[o, t])
            if wt == 0.0:
                continue
            i = idx[o, t]
            for j in range(src.shape[1]):
                for k in range(src.shape[2]):
                    out[o, j, k] += wt * src[i, j, k]


@numba.njit(parallel=True, cache=True)
def _resample_axis1(src, idx, w, out):
    n_out, n_tap = idx.shape
    for i in numba.prange(src.shape[0]):
        for o in range(n_out):
            for t in range(n_tap):
                wt = np.float32(w[o, t])
                if wt == 0.0:
                    continue
                j = idx[o, t]
                for k in range(src.shape[2]):
                    out[i, o, k] += wt * src[i, j, k]


@numba.njit(parallel=True, cache=True)
def _resample_axis2(src, idx, w, out):
    n_out, n_tap = idx.shape
    for i in numba.prange(src.shape[0]):
        for j in range(src.shape[1]):
            for o in range(n_out):
                acc = np.float32(0.0)
                for t in range(n_tap):
                    acc += np.float32(w[o, t]) * src[i, j, idx[o, t]]
                out[i, j, o] = acc


_KERNELS = (_resample_axis0, _resample_axis1, _resample_axis2)


def resample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Anti-aliased linear resampling of a 3D array to `shape`, same field of view (voxel edges aligned).
    Reads the input in place, whatever its integer or float dtype and strides; returns float32.

    The kernels run along the last axis innermost, so the input is first viewed with its axes in memory order
    (no copy): a NIfTI scan is Fortran-ordered (memory-mapped as stored), and reading it with the last axis
    innermost jumped a whole slice per voxel (512x512x300 -> 128^3: 1.39 s, now 0.09 s; bench_cnn3d, 2 cores)."""
    perm = np.argsort([-abs(s) for s in array.strides], kind="stable")
    if array.ndim == 3 and tuple(perm) != (0, 1, 2):
        small = resample(array.transpose(perm), tuple(int(shape[p]) for p in perm))
        return np.ascontiguousarray(small.transpose(np.argsort(perm)))
    out = array
    # the axis that shrinks most goes first, so later passes touch fewer voxels
    order = np.argsort([n_out / n_in for n_in, n_out in zip(array.shape, shape)], kind="stable")
    for ax in order:
        if out.shape[ax] != shape[ax]:
            idx, w = _taps(out.shape[ax], shape[ax])
            new_shape = list(out.shape)
            new_shape[ax] = shape[ax]
            result = np.zeros(new_shape, dtype=np.float32)
            _KERNELS[ax](out, idx, w, result)
            out = result
    return np.ascontiguousarray(out, dtype=np.float32)


def to_grid(volume: Volume, grid: tuple[int, int, int]) -> tuple[np.ndarray, GridMap]:
    """HU on the fixed canonical grid `grid` (float32) and the map back to the input's grid. The scan is resampled
    in its own axis order (no full-size reoriented copy) and only the small result is permuted/flipped to RAS+."""
    can = volume.canonical()
    zoom = np.array(can.shape, dtype=float) / np.array(grid, dtype=float)
    gmap = GridMap(can, tuple(int(v) for v in grid), scale_affine(can.affine, zoom))
    small = resample(volume.array, can.to_input_order(grid))
    return np.ascontiguousarray(can.view(small)), gmap


@numba.njit(inline="always", cache=True)
def _trilinear(p00, p01, p10, p11, k0, k1, wa, wb, wc):
    """The value between four rows of a source grid (p{a}{b}: lower/upper along the first axis, then the second)
    at position k0 + wc along the third, wb along the second and wa along the first."""
    lo = (p00[k0] * (1 - wc) + p00[k1] * wc) * (1 - wb) + (p01[k0] * (1 - wc) + p01[k1] * wc) * wb
    hi = (p10[k0] * (1 - wc) + p10[k1] * wc) * (1 - wb) + (p11[k0] * (1 - wc) + p11[k1] * wc) * wb
    return lo * (1 - wa) + hi * wa


@numba.njit(parallel=True, cache=True)
def trilinear_add(src, rows, a0, a1, aw, aoff, b0, b1, bw, boff, c0, c1, cw, coff, weight, out):
    """out[r] += weight * src[rows[r]] interpolated linearly at (a, b, c) (per axis: lower index, upper index,
    weight of the upper one, and whether the output voxel is outside the source grid: then the row that takes
    the source's class 0, background, gets the weight and the others nothing). One pass over the output,
    parallel over its first axis."""
    n_rows = rows.shape[0]
    for i in numba.prange(out.shape[1]):
        wa = aw[i]
        for r in range(n_rows):
            s0 = src[rows[r], a0[i]]
            s1 = src[rows[r], a1[i]]
            o = out[r, i]
            for j in range(out.shape[2]):
                wb = bw[j]
                p00, p01 = s0[b0[j]], s0[b1[j]]
                p10, p11 = s1[b0[j]], s1[b1[j]]
                outside_ij = aoff[i] or boff[j]
                for k in range(out.shape[3]):
                    if outside_ij or coff[k]:
                        if rows[r] == 0:  # the source's background
                            o[j, k] += weight
                        continue
                    o[j, k] += weight * _trilinear(p00, p01, p10, p11, c0[k], c1[k], wa, wb, cw[k])


@numba.njit(parallel=True, cache=True)
def trilinear_argmax(src, a0, a1, aw, aoff, b0, b1, bw, boff, c0, c1, cw, coff, out):
    """out = the class (row of src) whose linearly interpolated value is highest at (a, b, c) (tables as in
    trilinear_add; the first class wins a tie, as numpy's argmax; outside the source grid: class 0). No
    (classes x voxels) temporary: one pass over the output, parallel over its first axis."""
    n_classes = src.shape[0]
    for i in numba.prange(out.shape[0]):
        wa = aw[i]
        for j in range(out.shape[1]):
            wb = bw[j]
            outside_ij = aoff[i] or boff[j]
            for k in range(out.shape[2]):
                if outside_ij or coff[k]:
                    out[i, j, k] = 0
                    continue
                k0, k1, wc = c0[k], c1[k], cw[k]
                best, arg = np.float32(-1.0), 0
                for r in range(n_classes):
                    s0 = src[r, a0[i]]
                    s1 = src[r, a1[i]]
                    v = _trilinear(s0[b0[j]], s0[b1[j]], s1[b0[j]], s1[b1[j]], k0, k1, wa, wb, wc)
                    if v > best:
                        best, arg = v, r
                out[i, j, k] = arg


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """For each voxel of an axis of n_in voxels, the voxel of the n_out grid whose cell contains its centre."""
    return np.minimum(((np.arange(n_in) + 0.5) * (n_out / n_in)).astype(np.int64), n_out - 1)


@numba.njit(parallel=True, cache=True)
def _expand_nearest(small, ii, jj, kk, out):
    for a in numba.prange(out.shape[0]):
        src = small[ii[a]]
        for b in range(out.shape[1]):
            row = src[jj[b]]
            for c in range(out.shape[2]):
                out[a, b, c] = row[kk[c]]


def expand_nearest(small: np.ndarray, shape) -> np.ndarray:
    """`small`, a grid over the same field of view in the same axis order, onto `shape` by nearest neighbour
    (each output voxel takes the grid cell that holds its centre)."""
    out = np.empty(tuple(shape), dtype=small.dtype)
    _expand_nearest(np.ascontiguousarray(small), *[nearest_indices(n, m) for n, m in zip(shape, small.shape)], out)
    return out


def from_grid(labels_grid: np.ndarray, gmap: GridMap, volume: Volume) -> Volume:
    """Label map on the fixed grid -> label Volume on the input's own grid and orientation (nearest). The small
    grid is turned back to the input's axis order first, then expanded straight into the output array."""
    small = np.ascontiguousarray(gmap.canonical.to_input(labels_grid))
    out = np.empty(volume.shape, dtype=labels_grid.dtype)
    idx = []
    for a, (_, flip) in enumerate(gmap.ornt):  # ties broken on the canonical axes, so flips give the same map
        n_in, n_out = volume.shape[a], small.shape[a]
        canon_idx = nearest_indices(n_in, n_out)
        idx.append(n_out - 1 - canon_idx[::-1] if flip < 0 else canon_idx)
    _expand_nearest(small, *idx, out)
    return volume.with_array(out)


# --- physical spacing: the scan at a fixed spacing in mm, padded with air or tiled to a network's grid ---------

#: what pads a scan outside its field of view: air, as outside the body
AIR_HU = -1024.0
#: work-grid sides beyond one tile are rounded up to this (the U-Nets halve the grid four times)
ALIGN = 16


@dataclass(frozen=True)
class SpacingMap:
    """How the canonical input grid maps onto a work grid at a fixed spacing, and the work grid onto tiles.

    `inner` (a GridMap) is the scan resampled over its whole field of view to the card's spacing (each side
    rounded to whole voxels, so the spacing is within half a voxel over the field of view of the card's);
    the work grid is that grid padded with air by `pad_before` voxels (and up to `shape`) to at least one tile
    and to a multiple of ALIGN beyond it; `tiles` are the starts of the tile_shape windows covering it, overlapping
    where it is larger than one tile. Without a spacing (an old card) the inner grid is the tile itself: the
    whole field of view stretched onto it, the behaviour before physical spacing."""

    inner: GridMap
    pad_before: tuple[int, int, int]
    shape: tuple[int, int, int]
    tile_shape: tuple[int, int, int]
    tiles: tuple[tuple[int, int, int], ...]
    spacing_mm: tuple[tuple[float, float], ...] | None  # the card's, per axis (lo, hi)

    @property
    def canonical(self) -> Canonical:
        return self.inner.canonical

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return self.inner.canonical_shape

    @property
    def canonical_affine(self) -> np.ndarray:
        return self.inner.canonical_affine

    @property
    def affine(self) -> np.ndarray:
        """Work grid voxels -> RAS mm."""
        return crop_affine(self.inner.grid_affine, -np.asarray(self.pad_before, float))

    @property
    def inner_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(p, p + n) for p, n in zip(self.pad_before, self.inner.grid_shape))

    def crop_inner(self, array: np.ndarray) -> np.ndarray:
        """The scan's own part of an array on the work grid (last three axes)."""
        return array[(..., *self.inner_slices)]


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of windows of `tile` voxels covering [0, n) with at least `overlap` voxels shared by neighbours,
    evenly spread, multiples of 2 (n and tile even) so a half-resolution output lines up."""
    if n <= tile:
        return [0]
    k = int(np.ceil((n - overlap) / max(1, tile - overlap)))
    starts = np.round(np.linspace(0, n - tile, k) / 2).astype(int) * 2
    return sorted({int(s) for s in starts})


def work_shape(inner_shape, tile_shape) -> tuple[int, int, int]:
    """The work grid: at least one tile, each side beyond it rounded up to a multiple of ALIGN."""
    return tuple(int(t) if n <= t else int(np.ceil(n / ALIGN) * ALIGN) for n, t in zip(inner_shape, tile_shape))


def spacing_ranges(spacing_mm) -> tuple[tuple[float, float], ...]:
    """Per canonical axis (lo, hi) mm from a spacing given per axis as one number (fixed) or [lo, hi]."""
    return tuple((float(v), float(v)) if np.ndim(v) == 0 else (float(v[0]), float(v[1])) for v in spacing_mm)


def work_spacing(volume: Volume, spacing_mm, tile_shape) -> np.ndarray:
    """The spacing (canonical x, y, z mm) a scan is resampled to: per axis, its field of view over the tile
    clipped to the axis's range (a fixed spacing is a range of one value), so a scan whose field of view spreads
    over the tile at a spacing the network was trained at is not resampled at all, and any other at the range's
    nearest end, whatever its field of view."""
    can = volume.canonical()
    extent = np.array(can.shape) * np.sqrt((can.affine[:3, :3] ** 2).sum(0))
    lo, hi = np.array(spacing_ranges(spacing_mm)).T
    return np.clip(extent / np.asarray(tile_shape, float), lo, hi)


def spacing_map(volume: Volume, spacing_mm, tile_shape, *, overlap=(32, 32, 32)) -> SpacingMap:
    """The SpacingMap of a scan at `spacing_mm` (canonical x, y, z, each a number or a [lo, hi] range, see
    `work_spacing`; None: the field of view stretched onto `tile_shape`)."""
    can = volume.canonical()
    tile_shape = tuple(int(v) for v in tile_shape)
    if spacing_mm is None:
        inner_shape = tile_shape
    else:
        extent = np.array(can.shape) * np.sqrt((can.affine[:3, :3] ** 2).sum(0))
        sp = work_spacing(volume, spacing_mm, tile_shape)
        inner_shape = tuple(max(1, int(round(e / s))) for e, s in zip(extent, sp))
    zoom = np.array(can.shape, dtype=float) / np.array(inner_shape, dtype=float)
    inner = GridMap(can, inner_shape, scale_affine(can.affine, zoom))
    shape = work_shape(inner_shape, tile_shape)
    pad = tuple((w - n) // 2 for w, n in zip(shape, inner_shape))
    starts = [tile_starts(w, t, o) for w, t, o in zip(shape, tile_shape, overlap)]
    tiles = tuple((a, b, c) for a in starts[0] for b in starts[1] for c in starts[2])
    return SpacingMap(inner, pad, shape, tile_shape, tiles, None if spacing_mm is None else spacing_ranges(spacing_mm))


def to_spacing(volume: Volume, spacing_mm, tile_shape, *, overlap=(32, 32, 32),
               pad_hu: float = AIR_HU) -> tuple[np.ndarray, SpacingMap]:
    """HU (float32) on the canonical work grid at `spacing_mm` (the scan anti-aliased-resampled over its whole
    field of view, padded with air to at least one `tile_shape` tile) and the SpacingMap back to the input's
    grid. With spacing_mm None, exactly `to_grid(volume, tile_shape)`."""
    smap = spacing_map(volume, spacing_mm, tile_shape, overlap=overlap)
    can = smap.canonical
    small = np.ascontiguousarray(can.view(resample(volume.array, can.to_input_order(smap.inner.grid_shape))))
    if smap.shape == smap.inner.grid_shape:
        return small, smap
    work = np.full(smap.shape, pad_hu, np.float32)
    work[smap.inner_slices] = small
    return work, smap


def run_tiled(x: np.ndarray, smap: SpacingMap, fn, *, reduce: str = "mean", whole_voxels: int = 0) -> np.ndarray:
    """fn(x[..., tile]) -> (C, *tile / f) for every tile of the work grid (x: (..., *work shape)), merged onto
    the work grid (divided by the same f): averaged where tiles overlap ("mean", for probabilities) or their
    maximum ("max", for heat-maps). One tile, or a work grid of at most `whole_voxels` voxels (for a fully
    convolutional network: no seams, and one run costs less than the overlapping tiles): fn(x) as it is."""
    if (len(smap.tiles) == 1 and smap.shape == smap.tile_shape) or int(np.prod(smap.shape)) <= whole_voxels:
        return fn(x)
    out = count = None
    for start in smap.tiles:
        sl = tuple(slice(s, s + t) for s, t in zip(start, smap.tile_shape))
        y = fn(np.ascontiguousarray(x[(..., *sl)]))
        f = [t // n for t, n in zip(smap.tile_shape, y.shape[-3:])]
        if out is None:
            out = np.zeros((*y.shape[:-3], *(w // k for w, k in zip(smap.shape, f))), np.float32)
            count = np.zeros(out.shape[-3:], np.float32) if reduce == "mean" else None
            if reduce == "max":
                out.fill(-np.inf)
        dst = tuple(slice(s // k, s // k + n) for s, k, n in zip(start, f, y.shape[-3:]))
        if reduce == "mean":
            out[(..., *dst)] += y
            count[dst] += 1.0
        else:
            np.maximum(out[(..., *dst)], y, out=out[(..., *dst)])
    if reduce == "mean":
        out /= np.maximum(count, 1.0)
    return out


def from_spacing(labels_work: np.ndarray, smap: SpacingMap, volume: Volume) -> Volume:
    """Label map on the work grid -> label Volume on the input's own grid and orientation (nearest neighbour)."""
    return from_grid(np.ascontiguousarray(smap.crop_inner(labels_work)), smap.inner, volume)
