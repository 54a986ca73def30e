"""Where to put query points: the body mask and the training point samplers.

All positions here are integer voxel indices of a canonical grid (`_vox`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_THRESHOLD_HU = -500
BODY_GRID_MM = (4.0, 4.0, 3.0)  # along the canonical R, A, S axes


def body_mask(volume_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU, *, slice_axis: int = 2) -> np.ndarray:
    """Largest connected component above `threshold_hu`, holes filled slice by slice (along `slice_axis`, which
    should be the superior-inferior axis: see `superior_axis`; 2 on a canonical RAS+ grid) and in 3D:
    the patient, without the air around them or the table (usually disconnected)."""
    fg = np.asarray(volume_hu) > threshold_hu
    if not fg.any():
        return fg
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        fg = lab == int(np.argmax(sizes))
    moved = np.moveaxis(fg, slice_axis, 0)  # a view: filling its slices fills fg
    for k in range(moved.shape[0]):
        moved[k] = ndimage.binary_fill_holes(moved[k])
    return ndimage.binary_fill_holes(fg)


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the patient's superior-inferior direction (axial slices are across it)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return int(np.argmax(np.abs(a[2]) / np.linalg.norm(a, axis=0)))


def body_steps(spacing_mm, target_mm=BODY_GRID_MM) -> tuple[int, int, int]:
    """Voxel steps of the grid the body mask is computed on (every ~4 mm across, ~3 mm along the patient):
    the mask only decides which grid points are classified, so millimetre detail is not needed, and on a
    512x512x300 scan the full-resolution mask took 10-20 s. 1 on coarse scans (OpenKBP's 4.7 mm voxels)."""
    return tuple(int(max(1, round(t / s))) for t, s in zip(target_mm, np.asarray(spacing_mm, dtype=float)))


def _pick(mask_idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= 0 or mask_idx.size == 0:
        return np.empty(0, dtype=np.int64)
    return mask_idx[rng.integers(0, mask_idx.size, n)]


def sample_training_points(labels: np.ndarray, body: np.ndarray, contoured_ids, rng: np.random.Generator, *,
                           n_body: int, n_band: int, n_balanced: int, band_vox=(3, 3, 3)) -> np.ndarray:
    """Voxel indices (N, 3) for training: uniform in the body, in a band around the contoured organs
    (both sides of their edges, where segmentation errors are), and balanced over the contoured organs."""
    flat_labels = labels.reshape(-1)
    body_idx = np.flatnonzero(body)
    organs = np.isin(labels, np.asarray(list(contoured_ids), dtype=labels.dtype))
    struct = np.ones(tuple(2 * b + 1 for b in band_vox), dtype=bool)
    near = ndimage.binary_dilation(organs, structure=struct) & body if organs.any() else organs
    picks = [_pick(body_idx, n_body, rng), _pick(np.flatnonzero(near), n_band, rng)]
    ids = [i for i in contoured_ids if np.any(flat_labels == i)]
    for i in ids:
        picks.append(_pick(np.flatnonzero(flat_labels == i), n_balanced // max(len(ids), 1), rng))
    flat = np.concatenate(picks)
    return np.stack(np.unravel_index(flat, labels.shape), axis=1).astype(np.int32)
