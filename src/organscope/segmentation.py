"""Segmentation: what every engine returns. A label map on the input's grid, the organ name of each label value,
optionally each organ's confidence and the class probabilities on the engine's own grid, and timings. No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import ModelError
from .volume import Volume


def labels_dtype(n_classes: int):
    """The smallest unsigned dtype holding label values 0..n_classes-1."""
    return np.uint8 if n_classes <= 256 else np.uint16


@dataclass(frozen=True)
class ClassProbabilities:
    """Class probabilities (C, *grid) float32 on a grid over the scan's field of view, in the scan's own axis order
    (`affine` maps that grid's voxels to RAS mm); class c is `classes[c]`, 0 = background. Engines work on grids
    coarser than the scan (a network grid, a refinement level), so this stays at that size until asked for more."""

    array: np.ndarray
    affine: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self):
        if self.array.ndim != 4 or self.array.shape[0] != len(self.classes):
            raise ModelError(f"Class probabilities of shape {self.array.shape} do not match {len(self.classes)} "
                             "classes.")

    def on_grid(self, volume: Volume) -> np.ndarray:
        """(C, *volume.shape) float32 probabilities on the scan's own grid by linear interpolation (voxel edges of
        the two grids aligned over the field of view). Memory: C x the scan's voxels x 4 bytes."""
        from .grid import resample

        if tuple(self.array.shape[1:]) == volume.shape:
            return self.array
        return np.stack([resample(p, volume.shape) for p in self.array])


@dataclass(frozen=True)
class Segmentation:
    """A label map on the input's grid (Volume of unsigned ints) and the organ name of each label value.

    confidence: per organ found, the mean probability of its voxels (0..1), where the engine gives one.
    probabilities: the class probabilities behind the labels, when the engine was asked for them.
    timings_s: seconds per stage (and counters such as points_classified)."""

    labels: Volume
    names: dict[int, str]
    timings_s: dict[str, float] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    probabilities: ClassProbabilities | None = field(default=None, repr=False)

    def present(self) -> list[str]:
        """Names of the organs with at least one voxel, in label order."""
        vals = np.unique(self.labels.array)
        return [self.names[int(v)] for v in vals if int(v) in self.names]

    def keep(self, organs) -> "Segmentation":
        """This segmentation with only the requested organs (canonical names or aliases); the other labels become
        background. Raises ModelError naming what the engine segments if an organ is unknown."""
        from .organs import normalize_name

        wanted = {normalize_name(o) for o in organs}
        unknown = sorted(wanted - set(self.names.values()))
        if unknown:
            raise ModelError(f"This engine does not segment {', '.join(unknown)}; "
                             f"it segments {', '.join(self.names.values())}.")
        keep = [i for i, n in self.names.items() if n in wanted]
        arr = self.labels.array
        out = np.where(np.isin(arr, keep), arr, 0).astype(arr.dtype)
        return replace(self, labels=self.labels.with_array(out), names={i: self.names[i] for i in keep},
                       confidence={n: c for n, c in self.confidence.items() if n in wanted})
