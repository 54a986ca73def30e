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
        """(C, *volume.shape) float32 probabilities on the scan's own grid, by linear interpolation along each
        axis at the scan's voxel centres as this grid's `affine` places them (a grid that covers the field of
        view with its voxel edges aligned, such as a network grid, gives the same as resampling it; a refinement
        level's grid, whose points sit at g*step + step//2, lands where its points are). Scan voxels more than
        half a grid voxel outside this grid (e.g. outside the body box of slice2d) are background. Both grids
        must share their axes (this grid is in the scan's axis order; scaled and shifted only). Memory: C x the
        scan's voxels x 4 bytes."""
        shape = tuple(volume.shape)
        if tuple(self.array.shape[1:]) == shape and np.allclose(self.affine, volume.affine, atol=1e-4):
            return self.array
        out = np.zeros((len(self.classes), *shape), dtype=np.float32)
        self.add_on_grid(volume, out, 1.0)
        return out

    def add_on_grid(self, volume: Volume, out: np.ndarray, weight: float, order=None) -> None:
        """out += weight * on_grid(volume), in one compiled pass (no full-size temporaries: 0.02-0.05 s where
        numpy's axis-by-axis interpolation took ~1 s for 8 classes on a 164 x 164 x 180 grid). `order`: the class
        of this array written to each row of `out` (default: the same order)."""
        from .grid import trilinear_add

        rows = np.arange(len(self.classes)) if order is None else np.asarray(order, dtype=np.int64)
        trilinear_add(np.ascontiguousarray(self.array, dtype=np.float32), rows, *self._tables(volume),
                      np.float32(weight), out)

    def argmax_on_grid(self, volume: Volume, out: np.ndarray | None = None) -> np.ndarray:
        """on_grid(volume).argmax(axis=0) (the class index per scan voxel), without the (C, *scan) array: the
        probabilities are interpolated linearly at each voxel and compared there. `out`: a labels array of the
        scan's shape to write into (e.g. a view of a box of a larger map, with `volume` that box's grid)."""
        from .grid import trilinear_argmax

        if out is None:
            out = np.empty(tuple(volume.shape), dtype=labels_dtype(len(self.classes)))
        trilinear_argmax(np.ascontiguousarray(self.array, dtype=np.float32), *self._tables(volume), out)
        return out

    def _tables(self, volume: Volume) -> list[np.ndarray]:
        """Per axis of `volume`'s grid: lower and upper index on this grid, weight of the upper one, and whether
        the voxel lies more than half a grid voxel outside this grid."""
        shape = tuple(volume.shape)
        m = np.linalg.inv(self.affine) @ np.asarray(volume.affine, float)  # scan voxel -> this grid's voxel
        lin = m[:3, :3]
        if not np.allclose(lin - np.diag(np.diag(lin)), 0.0, atol=1e-4 * max(1.0, float(np.abs(lin).max()))):
            raise ModelError("These class probabilities are on a grid whose axes are not the scan's; they cannot "
                             "be interpolated onto it.")
        tables = []
        for a in range(3):
            n_grid = self.array.shape[1 + a]
            u = m[a, a] * np.arange(shape[a]) + m[a, 3]
            off = (u < -0.5 - 1e-3) | (u > n_grid - 0.5 + 1e-3)
            u = np.clip(u, 0.0, n_grid - 1)
            i0 = np.floor(u).astype(np.int64)
            tables += [i0, np.minimum(i0 + 1, n_grid - 1), (u - i0).astype(np.float32), off]
        return tables

    def keep(self, names) -> "ClassProbabilities":
        """Background and the organs `names` only (in this order of classes); the other organs' probability
        goes to background, so every voxel still sums to 1."""
        keep = [c for c, n in enumerate(self.classes) if c > 0 and n in set(names)]
        if len(keep) == len(self.classes) - 1:
            return self
        organs = self.array[keep]
        background = np.clip(1.0 - organs.sum(axis=0), 0.0, 1.0)[None]
        return ClassProbabilities(np.ascontiguousarray(np.concatenate([background, organs]), dtype=np.float32),
                                  self.affine, ("background", *(self.classes[c] for c in keep)))


@dataclass(frozen=True)
class Segmentation:
    """A label map on the input's grid (Volume of unsigned ints) and the organ name of each label value.

    confidence: per organ present, the mean over its voxels (on the engine's working grid) of the probability of
        the class the engine picked there, in (0, 1]; organs not present have none.
    probabilities: the class probabilities behind the labels on the engine's working grid, when the engine was
        asked for them (segment(..., probabilities=True)); with an organ subset, background + those organs.
    timings_s: seconds per stage (and counters such as points_classified).
    qc: the anatomy check (`organscope.qc.QCResult`: the scan's body region, per organ verified or not with the
        reasons, cut off or not), set by `pipeline.segment_volume`; None when not checked."""

    labels: Volume
    names: dict[int, str]
    timings_s: dict[str, float] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    probabilities: ClassProbabilities | None = field(default=None, repr=False)
    qc: object | None = field(default=None, repr=False)

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
        probs = None if self.probabilities is None else self.probabilities.keep(wanted)
        return replace(self, labels=self.labels.with_array(out), names={i: self.names[i] for i in keep},
                       confidence={n: c for n, c in self.confidence.items() if n in wanted}, probabilities=probs)
