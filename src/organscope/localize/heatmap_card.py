"""The heat-map localiser's model card: the organs, the grids and CT windows that drive its preprocessing, the
presence threshold and the box sizes, read and checked once (`HeatmapCard.load`; the card's `engine` is "locate").
Kept apart from the localiser so that reading the card imports no numba or ONNX Runtime."""
from __future__ import annotations

from dataclasses import dataclass

from ..intensity import DEFAULT_WINDOWS_HU
from ..modelcard import (CardFieldError, ModelCard, card_field, finite_float, finite_floats, json_object, names,
                         non_negative_float, positive_ints, spacings_mm, windows_hu)

#: the grid the shipped heat-map network reads the scan from (the cnn3d grid); a card names its own (`source_grid`)
SOURCE_GRID = (128, 128, 128)
GRID = (64, 64, 64)
SIGMA2_MM2 = 150.0   # the paper's isotropic variance of the target Gaussians
TAU = 0.1            # the paper's threshold


def _half_extents_mm(v) -> tuple[tuple[str, tuple[float, float, float]], ...]:
    out = []
    for organ, half in json_object(v).items():
        try:
            xyz = finite_floats(half)
        except CardFieldError:
            xyz = ()
        if len(xyz) != 3 or min(xyz) <= 0:
            raise CardFieldError("must be 3 positive half-extents in mm", at=organ, value=half)
        out.append((organ, xyz))
    return tuple(out)


@dataclass(frozen=True)
class HeatmapCard(ModelCard):
    """organs: one heat-map per organ (the network's outputs); grid: the coarse grid of the heat-maps;
    input_grid: the grid the network reads (none: `grid`), a tile of the work grid; source_grid: the grid the scan
    is resampled to first when the card has no spacing; spacing_mm: the canonical (x, y, z) spacing (each a number or
    a [lo, hi] range: grid.work_spacing) the scan is resampled to, padded with air or tiled to input_grid (none, as in cards made before it: the field of view
    stretched onto source_grid);
    windows_hu: the input channels; tau: the presence threshold; box_margin_mm: added to the mean organ extent
    when the card has no fitted half-extents; box_half_extent_mm: (organ, (x, y, z) mm) fitted per organ."""

    organs: tuple[str, ...] = card_field(parse=names)
    grid: tuple[int, int, int] = card_field(parse=positive_ints(3))
    input_grid: tuple[int, int, int] | None = card_field(parse=positive_ints(3), default=None)
    source_grid: tuple[int, int, int] = card_field(parse=positive_ints(3), default=SOURCE_GRID)
    spacing_mm: tuple | None = card_field(parse=spacings_mm, default=None)
    windows_hu: tuple[tuple[float, float], ...] = card_field(parse=windows_hu, default=DEFAULT_WINDOWS_HU)
    tau: float = card_field(parse=finite_float, default=TAU)
    box_margin_mm: float = card_field(parse=non_negative_float, default=10.0)
    box_half_extent_mm: tuple[tuple[str, tuple[float, float, float]], ...] = card_field(parse=_half_extents_mm,
                                                                                        default=())

    @property
    def network_grid(self) -> tuple[int, int, int]:
        """The grid the network reads the scan on."""
        return self.input_grid or self.grid

    @property
    def organ_names(self) -> tuple[str, ...]:
        return self.organs
