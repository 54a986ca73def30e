"""Pure affine maths. Index order is (i, j, k); affines map voxel indices to RAS+ world millimetres.

Nothing here reads files. Every function that changes a grid returns the new affine with it.
"""
from __future__ import annotations

import numpy as np
import nibabel.orientations as nio

from .errors import GeometryError

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 50.0


def spacing_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel size along i, j, k in mm (column norms of the 3x3 part)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def check_affine(affine: np.ndarray) -> np.ndarray:
    """Return the affine as a float 4x4 array, or raise GeometryError saying what is wrong with it."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        raise GeometryError(f"The affine must be a 4x4 matrix, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise GeometryError("The affine contains NaN or infinite values; the file's geometry header is broken.")
    sp = spacing_mm(a)
    if np.any(sp < MIN_SPACING_MM) or np.any(sp > MAX_SPACING_MM):
        raise GeometryError(
            f"Voxel spacing {np.round(sp, 4).tolist()} mm is outside the plausible range for CT "
            f"({MIN_SPACING_MM}-{MAX_SPACING_MM} mm); check the file's header."
        )
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise GeometryError("The affine is singular (its voxel axes are not independent); check the file's header.")
    return a


def voxel_to_world(affine: np.ndarray, points_vox: np.ndarray) -> np.ndarray:
    """(N, 3) voxel coordinates -> (N, 3) RAS mm."""
    p = np.asarray(points_vox, dtype=float).reshape(-1, 3)
    return p @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """(N, 3) RAS mm -> (N, 3) continuous voxel coordinates."""
    p = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    inv = np.linalg.inv(affine)
    return p @ inv[:3, :3].T + inv[:3, 3]


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """Closest axis codes, e.g. ('R', 'A', 'S') for a canonical grid."""
    return tuple(nio.aff2axcodes(affine))


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (ornt array) taking this grid to the closest RAS+ grid."""
    return nio.io_orientation(affine)


def apply_orientation(array: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the first three axes of array by ornt; return (array, new affine). Exact: no resampling."""
    out = nio.apply_orientation(array, ornt)
    return np.ascontiguousarray(out), oriented_affine(affine, ornt, array.shape[:3])


def oriented_affine(affine: np.ndarray, ornt: np.ndarray, shape) -> np.ndarray:
    """Affine of the grid of `shape` after permuting/flipping its axes by ornt."""
    return affine @ nio.inv_ornt_aff(ornt, shape)


def invert_orientation(ornt: np.ndarray) -> np.ndarray:
    """The ornt that undoes ornt (to map canonical results back to the input's orientation)."""
    return _inverse(ornt)


def _inverse(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for in_ax, (out_ax, flip) in enumerate(ornt):
        inv[int(out_ax)] = (in_ax, flip)
    return inv


def crop_affine(affine: np.ndarray, start_vox) -> np.ndarray:
    """Affine of a sub-grid starting at integer voxel start_vox of the original grid."""
    out = np.array(affine, dtype=float)
    out[:3, 3] = voxel_to_world(affine, np.asarray(start_vox, dtype=float))[0]
    return out


def scale_affine(affine: np.ndarray, zoom) -> np.ndarray:
    """Affine of a grid whose voxels are `zoom` times larger along i, j, k, with voxel centres kept aligned
    so that voxel 0 of the new grid covers voxels 0..zoom-1 of the old one (centre at (zoom-1)/2)."""
    zoom = np.asarray(zoom, dtype=float)
    out = np.array(affine, dtype=float)
    out[:3, :3] = affine[:3, :3] * zoom
    out[:3, 3] = voxel_to_world(affine, (zoom - 1) / 2.0)[0]
    return out


class Canonical:
    """The closest RAS+ grid of an input grid (its axes permuted and flipped, never resampled), and the exact
    way there and back: the one canonical round trip of every engine, localiser and output.

        can = Canonical(volume.affine, volume.shape)
        hu = can.view(volume.array)          # zero-copy view on the canonical axes (can.shape, can.affine)
        out = can.to_input(labels_canon)     # zero-copy view on the input's axes
        lo, hi = can.box_to_input(start, stop)
    """

    __slots__ = ("ornt", "input_shape", "input_affine", "shape", "affine")

    def __init__(self, affine: np.ndarray, shape):
        self.input_affine = np.asarray(affine, dtype=float)
        self.input_shape = tuple(int(s) for s in shape[:3])
        self.ornt = canonical_transform(self.input_affine)
        self.shape: tuple[int, int, int] = tuple(int(self.input_shape[int(a)]) for a in np.argsort(self.ornt[:, 0]))
        self.affine: np.ndarray = oriented_affine(self.input_affine, self.ornt, self.input_shape)

    @property
    def identity(self) -> bool:
        """True when the input grid already is its canonical grid."""
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    def view(self, array: np.ndarray) -> np.ndarray:
        """An array on the input's axes (first three; the input grid itself, or any grid over its field of view)
        seen on the canonical axes (a view, no copy)."""
        return nio.apply_orientation(array, self.ornt)

    def to_input(self, array: np.ndarray) -> np.ndarray:
        """An array on the canonical axes (first three; the canonical grid, or any grid over the same field of
        view) seen on the input's axes (a view, no copy)."""
        return nio.apply_orientation(array, invert_orientation(self.ornt))

    def to_input_order(self, canonical_values) -> tuple:
        """Per-axis values given on the canonical axes (e.g. a grid shape), in the input's axis order."""
        return tuple(canonical_values[int(self.ornt[a, 0])] for a in range(3))

    def box_to_input(self, start, stop) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Inclusive voxel box [lo, hi] on the input grid of a canonical box [start, stop) (exact)."""
        lo, hi = [0, 0, 0], [0, 0, 0]
        for a, (c, flip) in enumerate(self.ornt):
            c = int(c)
            s, e = int(start[c]), int(stop[c]) - 1
            n = self.input_shape[a]
            lo[a], hi[a] = (n - 1 - e, n - 1 - s) if flip < 0 else (s, e)
        return tuple(lo), tuple(hi)
