"""The descriptor's sampling pattern: fixed offsets in millimetres around a query point.

The paper's "3.5D" pattern (Yerebakan et al.) has 6561 = 9 blocks x 729 samples:
blocks 0-2 are three orthogonal 27x27 planes at 4 mm (axial, coronal, sagittal), blocks 3-8 are
9x9x9 grids at 2, 3, 5, 12, 28 and 64 mm. Offsets are in the canonical RAS+ frame.

A pattern is plain data (an (M, 3) float array of mm offsets plus a block layout), so variants can
be tried; `decode_image` lays a descriptor out as the paper's 81x81 debugging picture (figure 1b).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAPER_PLANE_STEP_MM = 4.0
PAPER_GRID_STEPS_MM = (2.0, 3.0, 5.0, 12.0, 28.0, 64.0)


@dataclass(frozen=True)
class Pattern:
    """offsets_mm: (M, 3) offsets in RAS mm; image_rc: (M, 2) row/column of each sample in the decoded
    picture (or None when the pattern has no picture layout); name: a short identifier stored in model cards."""

    offsets_mm: np.ndarray
    image_rc: np.ndarray | None
    name: str

    @property
    def size(self) -> int:
        return int(self.offsets_mm.shape[0])

    def offsets_vox(self, affine: np.ndarray, *, transform: np.ndarray | None = None,
                    displacement_mm: np.ndarray | None = None) -> np.ndarray:
        """Integer voxel offsets on a grid with this affine: mm offsets mapped through the inverse of the
        affine's 3x3 part (i.e. divided by the spacing on an axis-aligned grid) and rounded.
        `transform` (3x3, optional) is applied to the mm offsets first (augmentation: rotation/scaling), then
        `displacement_mm` ((M, 3), optional) is added to them (augmentation: an elastic deformation)."""
        off = self.offsets_mm if transform is None else self.offsets_mm @ np.asarray(transform, float).T
        if displacement_mm is not None:
            displacement_mm = np.asarray(displacement_mm, float)
            if displacement_mm.shape != off.shape:
                raise ValueError(f"displacement_mm must be {off.shape}, not {displacement_mm.shape}")
            off = off + displacement_mm
        inv = np.linalg.inv(np.asarray(affine, float)[:3, :3])
        return np.rint(off @ inv.T).astype(np.int32)

    def mirror_index(self) -> np.ndarray:
        """(M,) index of each offset's left-right mirror (x negated in RAS+), so that `descriptor[:, mirror_index()]`
        is the descriptor of the same point in the scan mirrored about the sagittal plane through it. Raises
        ValueError for a pattern that is not symmetric in x."""
        def keys(offsets):  # (offset, its n-th occurrence): an offset repeated in several blocks (the centre in
            # each) maps to its mirror in the same block, so the index is its own inverse
            seen: dict = {}
            out = []
            for o in np.round(offsets, 6) + 0.0:  # + 0.0: -0.0 -> 0.0
                k = tuple(o)
                seen[k] = seen.get(k, -1) + 1
                out.append((k, seen[k]))
            return out

        where = {k: i for i, k in enumerate(keys(self.offsets_mm))}
        try:
            return np.array([where[k] for k in keys(self.offsets_mm * (-1.0, 1.0, 1.0))])
        except KeyError:
            raise ValueError(f"Pattern {self.name!r} is not left-right symmetric.") from None

    def decode_image(self, descriptor: np.ndarray) -> np.ndarray:
        """Lay a (M,) descriptor out as a 2D picture (81x81 for the paper's pattern)."""
        if self.image_rc is None:
            raise ValueError(f"Pattern {self.name!r} has no picture layout.")
        d = np.asarray(descriptor).reshape(-1)
        if d.size != self.size:
            raise ValueError(f"Descriptor has {d.size} values, pattern {self.name!r} has {self.size}.")
        h, w = self.image_rc.max(axis=0) + 1
        img = np.zeros((h, w), dtype=d.dtype)
        img[self.image_rc[:, 0], self.image_rc[:, 1]] = d
        return img

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size}


def _plane_block(step_mm: float, axes: tuple[int, int]) -> np.ndarray:
    """27x27 plane of offsets along two axes; row index runs along axes[0], column along axes[1]."""
    r = (np.arange(27) - 13) * step_mm
    rr, cc = np.meshgrid(r, r, indexing="ij")
    off = np.zeros((27, 27, 3))
    off[..., axes[0]] = rr
    off[..., axes[1]] = cc
    return off.reshape(-1, 3)


def _grid_block(step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """9x9x9 grid of offsets; picture layout: slice s (along z) is the 9x9 tile at (s // 3, s % 3)."""
    r = (np.arange(9) - 4) * step_mm
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")  # z slowest
    off = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    s, y, x = np.meshgrid(np.arange(9), np.arange(9), np.arange(9), indexing="ij")
    rows = (s // 3) * 9 + (8 - y)  # anterior up in the picture
    cols = (s % 3) * 9 + x
    return off, np.stack([rows.reshape(-1), cols.reshape(-1)], axis=1)


def paper_pattern(
    plane_step_mm: float = PAPER_PLANE_STEP_MM, grid_steps_mm: tuple[float, ...] = PAPER_GRID_STEPS_MM
) -> Pattern:
    """The paper's 6561-sample 3.5D pattern (or a variant with other steps, same layout)."""
    if len(grid_steps_mm) != 6:
        raise ValueError("The 81x81 layout needs exactly six 9x9x9 grids.")
    offsets, rcs = [], []
    r27, c27 = np.meshgrid(np.arange(27), np.arange(27), indexing="ij")
    plane_rc = np.stack([r27.reshape(-1), c27.reshape(-1)], axis=1)
    # axial (x,y), coronal (x,z), sagittal (y,z): rows along the second axis (flipped: up = +), cols the first
    for axes in ((1, 0), (2, 0), (2, 1)):
        off = _plane_block(plane_step_mm, axes)
        off[:, axes[0]] *= -1  # picture rows run from + to -
        offsets.append(off)
    for step in grid_steps_mm:
        off, rc = _grid_block(step)
        offsets.append(off)
        rcs.append(rc)
    rcs = [plane_rc] * 3 + rcs
    image_rc = np.concatenate([rc + np.array([(b // 3) * 27, (b % 3) * 27]) for b, rc in enumerate(rcs)])
    steps = "-".join(f"{s:g}" for s in grid_steps_mm)
    return Pattern(np.concatenate(offsets).astype(np.float64), image_rc.astype(np.int64),
                   f"3.5d-planes{plane_step_mm:g}-grids{steps}")
