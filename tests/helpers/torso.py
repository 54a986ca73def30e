"""A chest-like phantom (not head-and-neck CT): what the anatomy check's out-of-region refusal is tested on."""
from __future__ import annotations

import numpy as np

from organscope.volume import Volume


def torso(shape=(80, 60, 40), spacing=(5.0, 5.0, 5.0)) -> Volume:
    """A chest-like phantom on a RAS grid: body ellipse 34 x 24 cm (~640 cm2 per slice), two lungs, a spine."""
    i, j, _ = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y = (i - shape[0] / 2) * spacing[0], (j - shape[1] / 2) * spacing[1]
    hu = np.full(shape, -1000, np.int16)
    hu[(x / 170) ** 2 + (y / 120) ** 2 <= 1] = 40
    for cx in (-70, 70):
        hu[((x - cx) / 50) ** 2 + ((y - 10) / 70) ** 2 <= 1] = -850
    hu[(x ** 2 + (y + 80) ** 2) <= 15 ** 2] = 700
    return Volume(hu, np.diag([*spacing, 1.0]))
