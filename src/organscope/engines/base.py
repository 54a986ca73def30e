"""The engine interface: what every engine offers (segment), what some offer too (point queries), and the small
checks every engine shares. The registry of engines by name is `engines.registry`."""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..geometry import Canonical, invert_orientation, oriented_affine
from ..segmentation import ClassProbabilities, Segmentation
from ..volume import Volume

ProgressFn = Callable[[str, float], None]  # (stage, fraction done 0..1)


class Engine(Protocol):
    """A segmentation engine. `classes[0]` is background; label value i of a Segmentation is `classes[i]`.

    segment(volume, organs=None, probabilities=False, progress=None): the label map on the input's grid; `organs`
    restricts it to those organs (an engine with one model per organ runs only theirs; the others keep only their
    labels). Always: `Segmentation.confidence`, per organ present, the mean over its voxels of the engine's working
    grid of the probability of the class picked there (computed on that grid: one bincount). With
    probabilities=True: `Segmentation.probabilities`, the class probabilities (background + the organs) on the
    engine's own working grid (cnn3d/cascade: the fixed network grid; slice2d: the body box; sparse: the finest
    level's grid), in the input's axis order with that grid's affine, so `on_grid(volume)` lands on the scan.
    Without it nothing extra is computed or kept.

    An engine may also offer class_probabilities(volume, progress=None): those probabilities alone, without
    the label map (the ensemble fuses them)."""

    name: str
    classes: tuple[str, ...]

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation: ...


@runtime_checkable
class PointQueryEngine(Protocol):
    """An engine that answers "which organ is at this point" without segmenting the scan first: prepare a scan
    once, then query many points (world mm, or voxel indices of the input grid with voxel=True)."""

    name: str
    classes: tuple[str, ...]

    def prepare(self, volume: Volume): ...

    def query(self, scan, points, *, voxel: bool = False): ...


def supports_query(engine) -> bool:
    return isinstance(engine, PointQueryEngine)


def require_finite(volume: Volume) -> None:
    """One clear error for a scan (or API Volume) holding NaN or infinite values, which every engine rejects."""
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError("The scan contains NaN or infinite values; organscope needs finite HU values.")


def select_organs(known, organs, engine: str) -> list[str]:
    """Canonical names of the requested `organs` in the order of `known` (all of them when `organs` is None);
    an organ the engine's model does not segment is one clear error."""
    from ..organs import normalize_name

    known = list(known)
    if organs is None:
        return known
    wanted = [normalize_name(o) for o in organs]
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise InputError(f"The {engine} model has no organ {', '.join(unknown)}; it segments {', '.join(known)}.")
    return [o for o in known if o in wanted]


def no_progress(stage: str, fraction: float) -> None:
    return None


def organ_confidence(labels: np.ndarray, picked: np.ndarray, names: dict[int, str]) -> dict[str, float]:
    """Per organ of `names` (label value -> name) with voxels in `labels` (a label map on an engine's working
    grid, or its organ voxels only, flat): the mean of `picked` (the probability of the class picked at each of
    those voxels) over them, in (0, 1]. Organs without voxels get no entry. One bincount: no pass per organ."""
    lab = np.asarray(labels).ravel()
    n = max(names, default=0) + 1
    organ = np.flatnonzero(lab)  # organs are a few percent of a working grid: bincount only those
    if organ.size == 0:
        return {}
    lab = lab[organ]
    counts = np.bincount(lab, minlength=n)
    sums = np.bincount(lab, weights=np.asarray(picked).ravel()[organ].astype(np.float64), minlength=n)
    return {name: float(min(1.0, max(sums[i] / counts[i], 1e-6)))
            for i, name in sorted(names.items()) if i < len(counts) and counts[i] > 0}


def probabilities_to_input(probs: np.ndarray, grid_affine: np.ndarray, canonical: Canonical,
                           classes) -> ClassProbabilities:
    """(C, *grid) probabilities on a grid over the canonical (RAS+) axes, `grid_affine` its voxels -> RAS mm, as
    ClassProbabilities in the input's axis order (axes permuted and flipped back exactly; the affine follows)."""
    inv = invert_orientation(canonical.ornt)
    arr = np.moveaxis(canonical.to_input(np.moveaxis(probs, 0, -1)), -1, 0)
    affine = oriented_affine(np.asarray(grid_affine, float), inv, probs.shape[1:])
    return ClassProbabilities(np.ascontiguousarray(arr, dtype=np.float32), affine, tuple(classes))


def present_on_output(confidence: dict[str, float], out: Volume, grid_shape, names: dict[int, str]) -> dict[str, float]:
    """`confidence` without the organs that vanished on the way from a working grid to a scan with fewer voxels
    along some axis (nearest neighbour skips grid voxels there); checked only then, when the output is small."""
    if all(n >= g for n, g in zip(out.shape, grid_shape)):
        return confidence
    present = np.flatnonzero(np.bincount(out.array.ravel(order="K"), minlength=max(names, default=0) + 1))
    found = {names[int(v)] for v in present if int(v) in names}
    return {n: c for n, c in confidence.items() if n in found}
