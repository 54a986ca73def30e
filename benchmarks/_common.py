"""Helpers shared by the benchmarks: machine description, repeated timing, memory, printing.

Benchmarks print figures; they never pass or fail on a timing. Environment variables are read (and shown in
the header) but never set: thread counts are chosen through the libraries' own APIs.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable

ENV_SHOWN = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_NUM_THREADS")


def available_cores() -> int:
    """CPUs this process may run on (affinity), falling back to os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    import numpy as np

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cores_available": available_cores(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in ENV_SHOWN if k in os.environ},
    }
    for mod in ("numba", "onnxruntime", "scipy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc), MiB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (getrusage ru_maxrss), MiB."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def repeat(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs) -> float:
    xs = [x for x in xs]
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs) -> str:
    """'min-max' of a list, for showing how noisy the repeats were."""
    return f"{min(xs):.3g}-{max(xs):.3g}" if xs else "-"


class ExclusiveTimer:
    """Wraps functions to accumulate their *exclusive* wall time (time in nested wrapped calls is charged to
    the inner function only), keyed by (phase, name). The phase is set by the caller (e.g. from a progress
    callback). Overhead: two perf_counter calls per wrapped call."""

    def __init__(self):
        self.phase = "start"
        self.totals: dict[tuple[str, str], float] = {}
        self.calls: dict[tuple[str, str], int] = {}
        self._stack: list[float] = []  # child time accumulated per open frame

    def wrap(self, name: str, fn: Callable, phase_of: Callable[..., str | None] | None = None) -> Callable:
        def wrapped(*args, **kwargs):
            phase = (phase_of(*args, **kwargs) if phase_of else None) or self.phase
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                el = time.perf_counter() - t
                child = self._stack.pop()
                if self._stack:
                    self._stack[-1] += el
                key = (phase, name)
                self.totals[key] = self.totals.get(key, 0.0) + el - child
                self.calls[key] = self.calls.get(key, 0) + 1

        wrapped.__wrapped__ = fn
        return wrapped


def rule(title: str, width: int = 96) -> str:
    return f"\n== {title} " + "=" * max(3, width - len(title) - 4)
