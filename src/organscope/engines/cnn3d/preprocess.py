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
#: the spacing the shipped cards name (issue 13): per canonical axis, the field of view over GRID clipped to the
#: OpenKBP training split's 5th-95th percentile spacing, so training scans are not resampled and any other scan
#: (a cut field of view, a long or partial scan) is resampled to the range's nearest end and padded or tiled
SPACING_MM = ((3.75, 4.9), (3.75, 4.9), (2.0, 3.0))
BODY_THRESHOLD_HU = -200.0
