"""The cnn3d model card: the classes, the fixed grid and the CT windows that drive preprocessing, the logit
offsets and the clean-up, read and checked once (`Cnn3dCard.load`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ModelError
from ...intensity import DEFAULT_WINDOWS_HU
from ...modelcard import (ModelCard, boolean, card_field, finite_floats, names, offsets_array, spacings_mm,
                          positive_ints, windows_hu)
from .preprocess import GRID

N_BACKGROUND = 2  # the network's classes 0 (air) and 1 (body) are both background in the output


@dataclass(frozen=True)
class Cnn3dCard(ModelCard):
    """classes: background + organs (label values); network_classes: air, body + organs (the network's outputs);
    grid: the network's tile (canonical voxels); spacing_mm: the canonical (x, y, z) spacing the scan is resampled
    to, per axis a number or a [lo, hi] range (grid.work_spacing), before it is padded with air or tiled to the
    grid (none, as in cards made before it: the whole field of view stretched onto the grid); windows_hu: the
    input channels; logit_offsets: one per network class, added before the argmax; largest_component: keep each
    organ's largest component."""

    classes: tuple[str, ...] = card_field(parse=names)
    network_classes: tuple[str, ...] | None = card_field(parse=names, default=None)
    grid: tuple[int, int, int] = card_field(parse=positive_ints(3), default=GRID)
    spacing_mm: tuple | None = card_field(parse=spacings_mm, default=None)
    windows_hu: tuple[tuple[float, float], ...] = card_field(parse=windows_hu, default=DEFAULT_WINDOWS_HU)
    logit_offsets: tuple[float, ...] | None = card_field(parse=finite_floats, default=None)
    largest_component: bool = card_field(parse=boolean, default=False)

    @property
    def n_network(self) -> int:
        return len(self.network_classes) if self.network_classes else len(self.classes) + N_BACKGROUND - 1

    @property
    def organ_names(self) -> tuple[str, ...]:
        return self.classes[1:]

    def check(self) -> None:
        if not self.classes or self.classes[0] != "background":
            raise ModelError(f"Model card {self.path.name}: field 'classes' must start with 'background'.")
        if self.logit_offsets is not None and len(self.logit_offsets) != self.n_network:
            raise ModelError(f"Model card {self.path.name}: field 'logit_offsets' must hold {self.n_network} numbers, "
                             "one per network class.")

    def offsets_array(self) -> np.ndarray | None:
        """The logit offsets as a (n_network, 1, 1, 1) float32 array to add to the network's scores."""
        return offsets_array(self.logit_offsets)
