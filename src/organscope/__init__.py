"""organscope: which organ is where in a CT scan, fast, on an ordinary CPU.

Public API (imported lazily, so `import organscope` is instant):
    load_volume(path) -> Volume, segment(scan) -> Segmentation (the default engine, the ensemble),
    query(scan, points_mm) -> PointResult, save_segmentation(seg, path), engine(name) -> Engine,
    query_engine() -> the engine answering point queries (prepare a scan once for many), organs
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_volume": ("organscope.io", "load_volume"),
    "save_labels": ("organscope.io", "save_labels"),
    "Volume": ("organscope.volume", "Volume"),
    "segment": ("organscope.api", "segment"),
    "query": ("organscope.api", "query"),
    "engine": ("organscope.api", "engine"),
    "query_engine": ("organscope.api", "query_engine"),
    "save_segmentation": ("organscope.api", "save_segmentation"),
    "organs": ("organscope.organs", None),
    "OrganscopeError": ("organscope.errors", "OrganscopeError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'organscope' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)
