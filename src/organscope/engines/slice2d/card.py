"""The slice2d model card: one 2D network per organ (its ONNX file and the HU window its slices are scaled
through: the card's, so the card drives preprocessing), the slice size, and how each organ's slice range is found,
read and checked once (`Slice2dCard.load`)."""
from __future__ import annotations

from dataclasses import dataclass

from ...modelcard import (ModelCard, boolean, card_field, entry, hu_range, named_entries, non_negative_float, one_of,
                          positive_ints, text)

RANGE_MARGIN_MM = 10.0
SLICE_RANGES = ("sparse", "body")


@dataclass(frozen=True)
class OrganSpec:
    """One organ's network: its ONNX file (beside the card) and its HU window [low, high] (scaled to [0, 1])."""

    name: str
    file: str
    window_hu: tuple[float, float]


def organ_spec(name: str, spec) -> OrganSpec:
    return OrganSpec(name, entry(spec, "file", text), entry(spec, "window_hu", hu_range))


@dataclass(frozen=True)
class Slice2dCard(ModelCard):
    """organs: one network per organ (card order = label order); input_size: the slice size the networks take;
    range_margin_mm: added above and below an organ's located slice range; largest_component; slice_range:
    "sparse" (each organ's slices from the sparse classifier's coarse grid) or "body" (every body slice)."""

    organs: tuple[OrganSpec, ...] = card_field(parse=named_entries(organ_spec))
    input_size: tuple[int, int] = card_field(parse=positive_ints(2))
    range_margin_mm: float = card_field(parse=non_negative_float, default=RANGE_MARGIN_MM)
    largest_component: bool = card_field(parse=boolean, default=True)
    slice_range: str = card_field(parse=one_of(*SLICE_RANGES), default="sparse")

    @property
    def organ_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.organs)

    def organ(self, name: str) -> OrganSpec:
        return next(o for o in self.organs if o.name == name)
