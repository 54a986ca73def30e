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
