"""The cascade model card: the grid and CT windows that drive preprocessing, the organ groups (each with its
organs, minimum crop, network file and logit offsets), the output classes, the localiser and the clean-up, read
and checked once (`CascadeCard.load`); nothing in it changes after that."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ModelError
from ...intensity import DEFAULT_WINDOWS_HU
from ...modelcard import (CardFieldError, ModelCard, boolean, card_field, entry, finite_floats, named_entries, names,
                          non_negative_int, offsets_array, one_of, positive_ints, spacings_mm, text,
                          windows_hu)
from .groups import MARGIN_VOX

LOCALIZERS = ("sparse_grid", "heatmap")
N_BACKGROUND = 2  # each group network's classes 0 (air) and 1 (body, or an organ of another group)


@dataclass(frozen=True)
class GroupSpec:
    """One organ group: its organs (the network's classes after air and body), the smallest crop it is run on
    (grid voxels), its ONNX file (beside the card) and its logit offsets (one per network class, or None)."""

    name: str
    organs: tuple[str, ...]
    crop: tuple[int, int, int]
    file: str
    logit_offsets: tuple[float, ...] | None = None

    @property
    def n_network(self) -> int:
        return N_BACKGROUND + len(self.organs)

    def offsets_array(self) -> np.ndarray | None:
        """The logit offsets as a (n_network, 1, 1, 1) float32 array to add to the group network's scores."""
        return offsets_array(self.logit_offsets)


def group_spec(name: str, spec) -> GroupSpec:
    organs = entry(spec, "organs", names)
    offsets = entry(spec, "logit_offsets", finite_floats, None)
    if offsets is not None and len(offsets) != N_BACKGROUND + len(organs):
        raise CardFieldError(f"must hold {N_BACKGROUND + len(organs)} numbers, one per network class",
                             at="logit_offsets", value=spec["logit_offsets"])
    return GroupSpec(name, organs, entry(spec, "crop", positive_ints(3)), entry(spec, "file", text), offsets)


@dataclass(frozen=True)
class CascadeCard(ModelCard):
    """grid: the smallest canonical work grid (voxels); spacing_mm: the canonical (x, y, z) spacing (each a number or
    a [lo, hi] range: grid.work_spacing) the scan is resampled to before it is padded with air to at least the grid (none, as in cards made before it: the whole
    field of view stretched onto the grid); windows_hu: the input channels; groups: the organ groups (card order);
    classes: background + organs in label order (none: the groups' order); margin_vox: grid voxels around a
    group's boxes; largest_component; mirror_tta: average with the left-right mirrored crop; localizer: what
    finds the organ boxes; heatmap_model: the heat-map model it uses (none: the shipped one; a relative .onnx
    path: beside the card)."""

    grid: tuple[int, int, int] = card_field(parse=positive_ints(3))
    spacing_mm: tuple | None = card_field(parse=spacings_mm, default=None)
    groups: tuple[GroupSpec, ...] = card_field(parse=named_entries(group_spec))
    windows_hu: tuple[tuple[float, float], ...] = card_field(parse=windows_hu, default=DEFAULT_WINDOWS_HU)
    classes: tuple[str, ...] | None = card_field(parse=names, default=None)
    margin_vox: int = card_field(parse=non_negative_int, default=MARGIN_VOX)
    largest_component: bool = card_field(parse=boolean, default=True)
    mirror_tta: bool = card_field(parse=boolean, default=False)
    localizer: str = card_field(parse=one_of(*LOCALIZERS), default="sparse_grid")
    heatmap_model: str | None = card_field(parse=text, default=None)

    @property
    def group_organs(self) -> tuple[str, ...]:
        return tuple(o for g in self.groups for o in g.organs)

    @property
    def label_classes(self) -> tuple[str, ...]:
        """The output label values: the card's class order (the dataset's, as the other engines), else the
        groups' order after background."""
        return self.classes or ("background", *self.group_organs)

    @property
    def organ_names(self) -> tuple[str, ...]:
        return self.label_classes[1:]

    def group(self, name: str) -> GroupSpec:
        return next(g for g in self.groups if g.name == name)

    def check(self) -> None:
        classes, organs = self.label_classes, list(self.group_organs)
        if sorted(classes[1:]) != sorted(organs) or classes[0] != "background":
            raise ModelError(f"Model card {self.path.name}: field 'classes' must be 'background' and the groups' "
                             f"organs {organs} (got {list(classes)}).")
