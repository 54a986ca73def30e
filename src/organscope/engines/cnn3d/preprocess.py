"""cnn3d preprocessing defaults: the whole scan on one fixed canonical grid, two CT windows as channels.

The paper resamples every scan to 96x192x192 whatever its size (scale invariance from one field of view).
organscope's real data (OpenKBP head-and-neck) was already resampled by its authors to 128x128x128 whole-scan
grids at 3.5-5.1 mm in-plane and 2-3 mm between slices, so the fixed grid is 128^3 on the canonical RAS+ axes:
OpenKBP scans map onto it with no interpolation at all (labels stay exact for training and for scoring), and a
clinical 512x512x300 scan at 0.8x0.8x1.5 mm lands at ~3.3x3.3x3.5 mm, the resolution the model was trained at.

These are the training defaults; at inference the model card's `grid` and `windows_hu` are used
(`organscope.grid` resamples, `organscope.intensity` makes the windows).
"""
from __future__ import annotations

from ...intensity import DEFAULT_WINDOWS_HU as WINDOWS_HU  # noqa: F401 (the training default)

GRID = (128, 128, 128)
BODY_THRESHOLD_HU = -200.0
