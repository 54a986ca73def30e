"""The engine interface: what every engine offers (segment), what some offer too (point queries), and the small
checks every engine shares. The registry of engines by name is `engines.registry`."""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..segmentation import Segmentation
from ..volume import Volume

ProgressFn = Callable[[str, float], None]  # (stage, fraction done 0..1)


class Engine(Protocol):
    """A segmentation engine. `classes[0]` is background; label value i of a Segmentation is `classes[i]`.

    segment(volume, organs=None, progress=None): the label map on the input's grid; `organs` restricts it to those
    organs (an engine with one model per organ runs only theirs; the others keep only their labels)."""

    name: str
    classes: tuple[str, ...]

    def segment(self, volume: Volume, *, organs=None, progress: ProgressFn | None = None) -> Segmentation: ...


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
