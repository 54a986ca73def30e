"""Large short-lived arrays on ordinary 4 KiB pages.

numpy asks the kernel for transparent huge pages (madvise MADV_HUGEPAGE) on every array of 4 MiB or more. Under
the kernel's usual setting (/sys/kernel/mm/transparent_hugepage/defrag = madvise, the Debian and Ubuntu default)
the first write to such an array then waits while the kernel compacts memory into 2 MiB pages whenever free
memory is fragmented, as it is on any machine that has been up a while. Measured on the 2-core dev machine:
writing a fresh 75 MiB array took 0.30-0.63 s with huge pages against 0.05 s without; the sparse engine's
512 x 512 x 300 label map took 0.25 s to fill against 0.03 s, and a whole segmentation 1.64 s against 1.27 s.

`ordinary_pages()` turns numpy's request off while a segmentation runs (a label map, its masks and probability
maps are written once and soon dropped: huge pages would not pay back their set-up). It is a process-wide numpy
switch, so overlapping uses from several threads (the service's jobs) are counted and the setting is restored
when the last one ends. numpy's own NUMPY_MADVISE_HUGEPAGE environment variable still sets the default.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

__all__ = ["ordinary_pages"]

_lock = threading.Lock()
_depth = 0
_saved: bool | None = None


def _switch():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:  # a numpy without the switch: nothing to do
            return None
    return _set_madvise_hugepage


@contextmanager
def ordinary_pages():
    """Within: numpy allocates without asking for transparent huge pages; afterwards, as before."""
    global _depth, _saved
    switch = _switch()
    if switch is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = bool(switch(False))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                switch(_saved)
