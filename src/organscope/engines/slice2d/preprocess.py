"""slice2d preprocessing (per-organ 2D models, Salimi et al.): the body box in-plane and the organ's slice range,
every axial slice resized to one fixed size, HU clipped to the organ's window and scaled to [0, 1]; and back.

Axes are those of the canonical RAS+ grid: 0 right-left, 1 posterior-anterior, 2 inferior-superior (axial
slices are across axis 2). The paper resizes to 304 x 224 (right-left x antero-posterior); OpenKBP's body is
40-60 voxels across at 3.5-5 mm, so 128 x 96 (the same aspect) keeps every voxel and costs a fifth.
"""
from __future__ import annotations

import numpy as np

from ...grid import resample

INPUT_SIZE = (128, 96)
# (low, high) HU per organ; the paper clips every organ to [-70, 170]. Bone and air organs get wider windows.
SOFT_TISSUE_HU = (-70.0, 170.0)
WINDOWS_HU = {
    "mandible": (-300.0, 1500.0),
    "larynx": (-600.0, 400.0),
}
# training slices: the organ's slice range plus this many slices on each side (the paper's 30)
SLICE_MARGIN = 30


def window_for(organ: str) -> tuple[float, float]:
    return WINDOWS_HU.get(organ, SOFT_TISSUE_HU)


def to_slices(hu_slab: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """(X, Y, Z) HU slab of the crop -> (Z, 1, *INPUT_SIZE) float32 network input in [0, 1]."""
    lo, hi = window
    small = resample(hu_slab, INPUT_SIZE + (hu_slab.shape[2],))
    x = np.clip((small - lo) / (hi - lo), 0.0, 1.0)
    return np.ascontiguousarray(np.moveaxis(x, 2, 0)[:, None])


def to_mask_slices(mask_slab: np.ndarray) -> np.ndarray:
    """(X, Y, Z) binary mask -> (Z, *INPUT_SIZE) uint8 target resized the same way (linear, then > 0.5)."""
    small = resample(mask_slab.astype(np.float32), INPUT_SIZE + (mask_slab.shape[2],))
    return np.ascontiguousarray(np.moveaxis(small > 0.5, 2, 0)).astype(np.uint8)


def from_slices(prob: np.ndarray, crop_size) -> np.ndarray:
    """(Z, *INPUT_SIZE) probabilities -> (X, Y, Z) probabilities on the crop's own voxels."""
    slab = np.moveaxis(prob, 0, 2)
    return resample(slab, tuple(int(v) for v in crop_size))
