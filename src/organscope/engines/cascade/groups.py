"""Organ groups of the cascade's fine stage and the crops they are segmented in.

The coarse-to-fine paper groups neighbouring organs so that each fine network sees the organs that locate one
another (liver/spleen/kidneys; stomach/pancreas/duodenum; aorta/IVC). For the seven OpenKBP head-and-neck
organs the neighbourhoods are:

- midline: brainstem and spinal cord, one continuous column behind the airway;
- face: both parotids and the mandible, the parotids wrapping the mandible's rami;
- neck: larynx and oesophagus, the airway and the tube just behind it.

Crops live on the cascade's work grid: the scan at the card's spacing in mm (OpenKBP's 3.75-4.9 mm in-plane,
2-3 mm between slices: the resolution it was delivered at, the finest the training data has), padded with air
to at least 128^3 (`grid.to_spacing`). A crop is the union of the group's located boxes plus a margin, centred,
with each side rounded up to a multiple of 16 (the network halves the grid four times) and at least the
group's training crop; parts outside the work grid repeat its edge."""
from __future__ import annotations

import numpy as np

GROUPS: dict[str, tuple[str, ...]] = {
    "midline": ("brainstem", "spinal_cord"),
    "face": ("parotid_right", "parotid_left", "mandible"),
    "neck": ("larynx", "esophagus"),
}

#: grid voxels added on every side of a group's box (3.5-5 mm in-plane, 2-3 mm between slices on OpenKBP)
MARGIN_VOX = 4


def round_up(n, multiple: int = 16) -> np.ndarray:
    return (np.ceil(np.asarray(n, float) / multiple) * multiple).astype(int)


def crop_window(lo, hi, min_size, margin: int = MARGIN_VOX, limit=None) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of the crop around an inclusive voxel box [lo, hi]: the box plus `margin`, rounded up to a
    multiple of 16, at least `min_size`, at most `limit` rounded up (the whole grid), centred on the box."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = np.maximum(round_up(hi - lo + 1 + 2 * margin), np.asarray(min_size, int))
    if limit is not None:
        size = np.minimum(size, round_up(limit))
    start = np.round((lo + hi) / 2 - (size - 1) / 2).astype(int)
    return start, size


def extract(array: np.ndarray, start, size) -> np.ndarray:
    """array[start:start+size] (float32), the parts outside the array filled with its nearest edge voxel (as the
    training crops are: grid_sample's border padding)."""
    idx = [np.clip(np.arange(int(s), int(s) + int(n)), 0, dim - 1) for s, n, dim in zip(start, size, array.shape)]
    return np.ascontiguousarray(array[np.ix_(*idx)], dtype=np.float32)


def overlap(shape, start, size):
    """(slices into the array, slices into the crop) of their common part, or (None, None)."""
    start, size = np.asarray(start, int), np.asarray(size, int)
    a0 = np.maximum(start, 0)
    a1 = np.minimum(start + size, np.asarray(shape))
    if np.any(a1 <= a0):
        return None, None
    return (tuple(slice(int(a), int(b)) for a, b in zip(a0, a1)),
            tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(a0, a1, start)))
