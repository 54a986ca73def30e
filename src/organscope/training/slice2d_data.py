"""Training slices of one slice2d organ model, from the cnn3d cache (every OpenKBP case on its canonical
128^3 grid, targets 0 air, 1 body, 2.. organs).

Per case where the organ was contoured: the body box in-plane (from the body target, a few voxels of margin,
jittered per case as augmentation), the organ's slice range plus 30 slices each side (the paper's crop), every
slice resized to INPUT_SIZE and windowed for the organ. Cases where the organ was not contoured are left out:
their "not organ" pixels are unknown.
"""
from __future__ import annotations

import numpy as np

from ..engines.slice2d.preprocess import SLICE_MARGIN, to_mask_slices, to_slices, window_for
from .cnn3d_data import N_SPECIAL

BODY_MARGIN_VOX = 2


def body_box_inplane(body: np.ndarray, margin: int, rng: np.random.Generator | None, jitter: int = 3):
    xy = np.argwhere(body.any(axis=2))
    if not len(xy):
        return (0, body.shape[0]), (0, body.shape[1])
    lo, hi = xy.min(0) - margin, xy.max(0) + 1 + margin
    if rng is not None:
        lo = lo - rng.integers(0, jitter + 1, 2)
        hi = hi + rng.integers(0, jitter + 1, 2)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, body.shape[:2])
    return (int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))


def organ_slices(images, targets, contoured, organ_index: int, organ: str, case_ids, *, seed: int = 0,
                 jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) uint8 images (window scaled to 0..255) and (N, H, W) uint8 masks over the given cases."""
    rng = np.random.default_rng(seed) if jitter else None
    window = window_for(organ)
    xs, ys = [], []
    label = organ_index + N_SPECIAL
    for n in case_ids:
        if not contoured[n, organ_index]:
            continue
        t = np.asarray(targets[n])
        z = np.where((t == label).any(axis=(0, 1)))[0]
        if not len(z):
            continue
        z0, z1 = max(0, z.min() - SLICE_MARGIN), min(t.shape[2], z.max() + 1 + SLICE_MARGIN)
        (x0, x1), (y0, y1) = body_box_inplane(t[:, :, z0:z1] >= 1, BODY_MARGIN_VOX, rng)
        hu = np.asarray(images[n][x0:x1, y0:y1, z0:z1], dtype=np.float32)
        xs.append(np.round(to_slices(hu, window) * 255).astype(np.uint8))
        ys.append(to_mask_slices(t[x0:x1, y0:y1, z0:z1] == label))
    return np.concatenate(xs), np.concatenate(ys)
