"""Volume: an array with its affine. No I/O here."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import geometry
from .errors import InputError


@dataclass(frozen=True)
class Volume:
    """A 3D array indexed (i, j, k) and the 4x4 affine mapping voxel indices to RAS+ mm.

    `meta` carries free-form provenance (source path, DICOM series UID, ...), never geometry.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        arr = self.array
        if not isinstance(arr, np.ndarray):
            raise InputError("A volume's data must be a numpy array.")
        if arr.ndim == 4 and arr.shape[3] == 1:
            object.__setattr__(self, "array", arr[..., 0])
            arr = self.array
        if arr.ndim != 3:
            raise InputError(
                f"Expected a 3D volume but got {arr.ndim} dimension(s) of shape {arr.shape}; "
                "organscope needs a CT volume with several slices."
            )
        if min(arr.shape) < 1 or arr.size == 0:
            raise InputError(f"The volume is empty (shape {arr.shape}).")
        object.__setattr__(self, "affine", geometry.check_affine(self.affine))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing_mm(self) -> np.ndarray:
        return geometry.spacing_mm(self.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return geometry.axcodes(self.affine)

    def world_to_voxel(self, points_mm) -> np.ndarray:
        return geometry.world_to_voxel(self.affine, points_mm)

    def voxel_to_world(self, points_vox) -> np.ndarray:
        return geometry.voxel_to_world(self.affine, points_vox)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid, other data (e.g. a label map)."""
        if array.shape[:3] != self.shape:
            raise InputError(f"Array shape {array.shape} does not match the grid {self.shape}.")
        return Volume(array, self.affine, dict(self.meta))

    def canonical(self) -> geometry.Canonical:
        """The map between this grid and its closest RAS+ grid (axis permutations and flips only)."""
        return geometry.Canonical(self.affine, self.shape)

    def to_canonical(self) -> tuple["Volume", np.ndarray]:
        """Closest RAS+ version of this volume (axis permutations and flips only, no resampling, a contiguous copy)
        and the ornt needed by `from_canonical` to map results back."""
        can = self.canonical()
        return Volume(np.ascontiguousarray(can.view(self.array)), can.affine, dict(self.meta)), can.ornt

    def from_canonical(self, canonical_array: np.ndarray, ornt: np.ndarray | None = None) -> "Volume":
        """Map an array computed on the canonical grid of this volume back onto this volume's grid."""
        can = self.canonical()
        if tuple(canonical_array.shape[:3]) != can.shape:
            raise InputError(f"Canonical array shape {canonical_array.shape} does not match {can.shape}.")
        arr = can.to_input(canonical_array)
        return Volume(np.ascontiguousarray(arr), self.affine, dict(self.meta))
