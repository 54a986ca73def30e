"""Whether numba's parallel kernels may be launched from several Python threads at once.

The 'omp' and 'tbb' threading layers run concurrent launches side by side; the 'workqueue' layer (numba's
fallback when neither is installed) aborts the process on them. Code that runs engines on several threads (the
service's query pool, the ensemble's members) asks here first."""
from __future__ import annotations

import contextlib
import threading

import numpy as np

__all__ = ["engine_lock", "kernels_run_concurrently"]

_layer: str | None = None


def kernels_run_concurrently() -> bool:
    """True unless numba's threading layer is 'workqueue' (started here by one small parallel kernel)."""
    global _layer
    if _layer is None:
        import numba

        from .sampling.gather import gather

        gather(np.zeros((4, 4, 4), np.int16), np.zeros((128, 3), np.int32), np.zeros((1, 3), np.int32))
        try:
            _layer = numba.threading_layer()
        except ValueError:
            _layer = "workqueue"
    return _layer != "workqueue"


def engine_lock():
    """A lock to hold around engine calls made from several threads, where kernels cannot run concurrently;
    a context that does nothing where they can."""
    return contextlib.nullcontext() if kernels_run_concurrently() else threading.Lock()
