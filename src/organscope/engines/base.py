"""The engine interface and the registry of engines by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..errors import InputError, ModelError
from ..volume import Volume

ProgressFn = Callable[[str, float], None]  # (stage, fraction done 0..1)


@dataclass(frozen=True)
class Segmentation:
    """A label map on the input's grid (Volume of uint8) and the organ name of each label value."""

    labels: Volume
    names: dict[int, str]
    timings_s: dict[str, float]


class Engine(Protocol):
    name: str
    classes: tuple[str, ...]

    def segment(self, volume: Volume, *, progress: ProgressFn | None = None) -> Segmentation: ...


def _sparse(**kw):
    from .sparse import SparseEngine
    return SparseEngine(**kw)


def _cnn3d(**kw):
    from .cnn3d import Cnn3dEngine
    return Cnn3dEngine(**kw)


def _slice2d(**kw):
    from .slice2d import Slice2dEngine
    return Slice2dEngine(**kw)


def _cascade(**kw):
    from .cascade import CascadeEngine
    return CascadeEngine(**kw)


ENGINES: dict[str, Callable[..., Engine]] = {"sparse": _sparse, "cnn3d": _cnn3d, "slice2d": _slice2d,
                                             "cascade": _cascade}


def keep_organs(seg: Segmentation, organs) -> Segmentation:
    """The segmentation with only the requested organs (canonical names or aliases) kept; the other labels
    become background. Raises ModelError naming what the engine can segment if an organ is unknown."""
    from ..organs import normalize_name

    wanted = {normalize_name(o) for o in organs}
    unknown = sorted(wanted - set(seg.names.values()))
    if unknown:
        raise ModelError(f"This engine does not segment {', '.join(unknown)}; "
                         f"it segments {', '.join(seg.names.values())}.")
    keep = [i for i, n in seg.names.items() if n in wanted]
    arr = seg.labels.array
    out = np.where(np.isin(arr, keep), arr, 0).astype(arr.dtype)
    return Segmentation(seg.labels.with_array(out), {i: seg.names[i] for i in keep}, seg.timings_s)


def get_engine(name: str, **kwargs) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ModelError(f"Unknown engine {name!r}; available engines: {', '.join(sorted(ENGINES))}.") from None
    return factory(**kwargs)


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


def labels_dtype(n_classes: int):
    return np.uint8 if n_classes <= 256 else np.uint16
