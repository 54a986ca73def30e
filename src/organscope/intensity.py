"""CT intensities as network inputs: each (level, width) window in Hounsfield units becomes one channel in [0, 1].
The windows of a model are named by its card (`windows_hu`), so the card drives preprocessing."""
from __future__ import annotations

import numpy as np

#: (level, width) in HU of the 3D networks (cnn3d, the cascade's groups, the heat-map localiser), for cards that
#: name none. Soft tissue for the brainstem, cord, parotids and oesophagus wall; a wide window from air to bone
#: for the mandible, the spinal canal and the larynx's airway.
DEFAULT_WINDOWS_HU = ((40.0, 400.0), (300.0, 2000.0))


def windows(hu: np.ndarray, windows_hu) -> np.ndarray:
    """(len(windows_hu), *hu.shape) float32 in [0, 1]: one channel per (level, width) window in HU."""
    windows_hu = tuple(windows_hu)
    out = np.empty((len(windows_hu),) + hu.shape, dtype=np.float32)
    for c, (level, width) in enumerate(windows_hu):
        np.clip((hu - (level - width / 2)) / width, 0.0, 1.0, out=out[c])
    return out
