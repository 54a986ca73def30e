"""The sparse model card: the classes, the sampling pattern the network was trained on (so the card, not the
code, says where descriptors are read), the class bias added to its logits and the coarse-to-fine segmentation
schedule, read and checked once (`SparseCard.load`)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ...errors import ModelError
from ...modelcard import (CardFieldError, ModelCard, boolean, card_field, entry, finite_float, finite_floats,
                          json_object, names, non_negative_int, positive_int, positive_mm3)
from ...sampling.pattern import Pattern, paper_pattern


@dataclass(frozen=True)
class SegmentSettings:
    """Coarse-to-fine schedule: grid spacings in mm (the paper: 8 -> 4 -> 2 mm; a level finer than the scan's
    voxels is skipped), the paper's majority smoothing (a voxel takes a label held by >= `majority` of its 27
    neighbours; 0 = off), clean-up by the largest connected component per organ, before refinement too.
    At each level, classification sweeps repeat (at most `max_sweeps`) while newly classified points reveal new
    disagreements, so an edge that the coarser level misplaced by more than one grid step is still found."""

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    majority: int = 20
    largest_component: bool = True
    components_before_refinement: bool = True
    batch: int = 2048
    max_sweeps: int = 8


def _levels_mm(v) -> tuple[float, ...]:
    out = finite_floats(v)
    if not out or min(out) <= 0:
        raise CardFieldError("must be grid spacings in mm, positive")
    return out


def _majority(v) -> int:
    try:
        out = non_negative_int(v)
    except CardFieldError:
        out = -1
    if not 0 <= out <= 27:
        raise CardFieldError("must be a whole number of neighbours, 0 (off) to 27")
    return out


_SETTING_PARSERS = {"levels_mm": _levels_mm, "majority": _majority, "largest_component": boolean,
                    "components_before_refinement": boolean, "batch": positive_int, "max_sweeps": positive_int}


def segment_settings(v) -> SegmentSettings:
    """The card's `segmentation` object -> SegmentSettings (absent keys take the defaults; unknown keys are
    refused, so a misspelt setting is not silently ignored)."""
    given = json_object(v)
    known = [f.name for f in fields(SegmentSettings)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise CardFieldError(f"holds unknown keys {unknown} (known: {sorted(known)})")
    return SegmentSettings(**{k: entry(given, k, _SETTING_PARSERS[k]) for k in known if given.get(k) is not None})


@dataclass(frozen=True)
class PatternSpec:
    """The paper's pattern layout with the card's steps (mm): three planes at plane_step_mm, six grids."""

    plane_step_mm: float
    grid_steps_mm: tuple[float, ...]

    def build(self) -> Pattern:
        return paper_pattern(self.plane_step_mm, self.grid_steps_mm)


def _positive_mm(v) -> float:
    out = finite_float(v)
    if out <= 0:
        raise CardFieldError("must be a positive number of mm")
    return out


def _grid_steps_mm(v) -> tuple[float, ...]:
    out = finite_floats(v)
    if len(out) != 6 or min(out) <= 0:
        raise CardFieldError("must be 6 positive grid steps in mm")
    return out


def pattern_spec(v) -> PatternSpec:
    obj = json_object(v)
    return PatternSpec(entry(obj, "plane_step_mm", _positive_mm), entry(obj, "grid_steps_mm", _grid_steps_mm))


@dataclass(frozen=True)
class SparseCard(ModelCard):
    """classes: background + organs (the network's outputs, in label order); n_inputs: the descriptor length
    the network takes; pattern: where the descriptor samples lie (mm); logit_bias: one per class, added to the
    network's logits (the prior calibration; none: zeros); segmentation: the coarse-to-fine schedule."""

    classes: tuple[str, ...] = card_field(parse=names)
    n_inputs: int = card_field(parse=positive_int)
    pattern: PatternSpec = card_field(parse=pattern_spec)
    logit_bias: tuple[float, ...] | None = card_field(parse=finite_floats, default=None)
    segmentation: SegmentSettings = card_field(parse=segment_settings, default=SegmentSettings())
    min_spacing_mm: tuple[float, float, float] | None = card_field(parse=positive_mm3, default=None)
    working_spacing_mm: tuple[float, float, float] | None = card_field(parse=positive_mm3, default=None)

    @property
    def organ_names(self) -> tuple[str, ...]:
        return self.classes[1:] if self.classes[:1] == ("background",) else self.classes

    def make_pattern(self) -> Pattern:
        return self.pattern.build()

    def check(self) -> None:
        size = self.make_pattern().size
        if size != self.n_inputs:
            raise ModelError(f"Model card {self.path.name}: field 'pattern' has {size} samples but field 'n_inputs' "
                             f"says the network takes {self.n_inputs}.")
        if self.logit_bias is not None and len(self.logit_bias) != len(self.classes):
            raise ModelError(f"Model card {self.path.name}: field 'logit_bias' must hold {len(self.classes)} numbers, "
                             "one per class.")
