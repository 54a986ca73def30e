"""The patient's body: its mask (threshold, largest component, holes filled per axial slice and in 3D) and the
box around it, as a recorded crop that maps results back exactly onto the grid it was cut from.

Used by the slice2d engine (per-organ 2D models see only the body, in-plane) and by anyone who wants to drop
the air and the table around a scan. The mask is computed on a coarse grid (every ~4 mm, see
`sampling.points.body_steps`): on a 512x512x300 scan the full-resolution mask takes 10-20 s, the coarse one
a fraction of a second, and a box does not need millimetre detail.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import crop_affine
from .sampling.points import body_mask, body_steps, superior_axis
from .volume import Volume


@dataclass(frozen=True)
class Crop:
    """A box of voxel indices [start, stop) on a grid of `shape`."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def crop(self, volume: Volume) -> Volume:
        """The cropped Volume, with its affine moved to the box's first voxel."""
        if tuple(volume.shape) != tuple(self.shape):
            raise ValueError(f"crop made for a grid of {self.shape}, volume has {volume.shape}")
        return Volume(np.ascontiguousarray(volume.array[self.slices]), crop_affine(volume.affine, self.start),
                      dict(volume.meta))

    def paste(self, cropped: np.ndarray, fill=0, dtype=None) -> np.ndarray:
        """An array of the full grid's shape holding `cropped` at the box and `fill` elsewhere."""
        if tuple(cropped.shape[:3]) != self.size:
            raise ValueError(f"array of shape {cropped.shape} does not fit the crop of size {self.size}")
        out = np.full(self.shape, fill, dtype=dtype or cropped.dtype)
        out[self.slices] = cropped
        return out

    def with_axis(self, axis: int, start: int, stop: int) -> "Crop":
        """The same box with another range along one axis (clipped to the grid)."""
        a, b = list(self.start), list(self.stop)
        a[axis], b[axis] = max(0, int(start)), min(self.shape[axis], int(stop))
        return Crop(tuple(a), tuple(b), self.shape)


def body_mask_coarse(volume: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Body mask on every step-th voxel of the volume's own grid, and that step."""
    step = body_steps(volume.spacing_mm)
    pts = [np.minimum(np.arange(-(-n // s)) * s + s // 2, n - 1) for n, s in zip(volume.shape, step)]
    sub = volume.array[np.ix_(*pts)]
    return body_mask(sub, slice_axis=superior_axis(volume.affine)), step


def body_crop(volume: Volume, margin_mm: float = 5.0) -> Crop:
    """The box around the body (all axes) with a margin, or the whole grid if no body is found."""
    mask, step = body_mask_coarse(volume)
    shape = tuple(int(n) for n in volume.shape)
    if not mask.any():
        return Crop((0, 0, 0), shape, shape)
    idx = np.argwhere(mask)
    margin = np.ceil(margin_mm / volume.spacing_mm).astype(int)
    lo = idx.min(0) * np.array(step) - margin
    hi = (idx.max(0) + 1) * np.array(step) + margin
    start = tuple(int(max(0, v)) for v in lo)
    stop = tuple(int(min(n, v)) for n, v in zip(shape, hi))
    return Crop(start, stop, shape)
