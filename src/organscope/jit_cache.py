"""Whether numba's on-disk cache already holds organscope's compiled kernels, told without importing numba (the
CLI asks before it loads an engine, to say why the first run after an installation takes up to ~20 s longer).

The kernels are the `@njit(cache=True)` functions of the modules in KERNEL_MODULES. numba caches each one as an
index `<module>.<function>-<first line>.py<XY><abiflags>.nbi` (and data files `.nbc`) in the first of these
folders that it can write to (numba.core.caching: UserProvidedCacheLocator, InTreeCacheLocator,
UserWideCacheLocator): `$NUMBA_CACHE_DIR/<folder>_<sha1 of the module's folder>/`, the module's own
`__pycache__/`, or the user's cache folder (`~/.cache/numba/...` on Linux). An index counts only if it was written
by this numba version for the module's current source (the index holds numba's version and the sha256 of the
source file, which are what numba itself checks): after an upgrade, or an edit of the module, numba compiles
again, and so the cache is cold again.

The index files' names are not needed (an index not written for the module's current source does not hold its
sha256), so kernels that moved, were renamed or are inlined need no list here. Which kernels of a module run
depends on the scan (a serial or a parallel gather, which axes are resampled), so a module counts as cached
when at least one of its kernels is: a warm installation never gets the notice, at the price of staying silent
when a later scan needs one more kernel of a module already in use (a few seconds). Not followed: numba's
`.numba_config.yaml` and NUMBA_CACHE_LOCATOR_CLASSES (a cold cache is then reported from the folders above).
Costs about a millisecond: a few small files read, stdlib only.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

PACKAGE = Path(os.path.abspath(__file__)).parent  # as numba names it: abspath, not resolve

#: the modules with cached kernels that each engine's segmentation runs (measured with an empty NUMBA_CACHE_DIR:
#: the sparse engine gathers descriptors and refines its grid; cnn3d and the cascade resample; slice2d resamples
#: and gathers with the sparse classifier's grid); an engine not named here counts every module
KERNEL_MODULES: dict[str, tuple[str, ...]] = {
    "sparse": ("sampling/gather.py", "engines/sparse/refine.py"),
    "cnn3d": ("grid.py",),
    "cascade": ("grid.py",),
    "slice2d": ("grid.py", "sampling/gather.py"),
    "ensemble": ("sampling/gather.py", "engines/sparse/refine.py", "grid.py"),  # its members': sparse, cnn3d
}
#: the modules whose kernels a point query runs (`organscope query`, the service's clicks): the gather, and the
#: compiled one-point network with its locate and top-3 steps
QUERY_KERNEL_MODULES: dict[str, tuple[str, ...]] = {
    "sparse": ("sampling/gather.py", "engines/sparse/click.py"),
}
ALL_MODULES = tuple(sorted({m for table in (KERNEL_MODULES, QUERY_KERNEL_MODULES) for ms in table.values()
                            for m in ms}))

#: measured on the 2-core machine (bundled scan, empty cache against warm, benchmarks/bench_first_run.py): sparse
#: segment 5.6 s against 2.8 s, sparse query 4.6 s against 1.6 s; earlier (before serial kernels replaced
#: parallel ones where they cost little) sparse 8.96 s against 2.33 s, slice2d 15.8 s against 5.2 s, cnn3d 2.4 s
#: against 1.9 s
NOTICE = "organscope: compiling its kernels on first use (a few seconds, up to ~10 s for some engines; once)..."


def _numba_version() -> str | None:
    """The installed numba's version, read from its _version.py (importing numba takes ~0.4 s)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("numba")
        folder = Path(next(iter(spec.submodule_search_locations)))
        m = re.search(r'"version":\s*"([^"]+)"', (folder / "_version.py").read_text())
    except Exception:  # no numba, or a layout this does not know: the version is not checked
        return None
    return m.group(1) if m else None


def _user_cache_dir() -> Path:
    """numba's user-wide cache folder (its appdirs.user_cache_dir("numba"))."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "numba" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "numba"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numba"


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def cache_dirs(py_file: Path) -> list[Path]:
    """Where numba caches `py_file`'s kernels, as its locators decide: $NUMBA_CACHE_DIR's folder if it can be
    written, else the module's __pycache__ if it can be written, else the user-wide one."""
    sub = py_file.parent.name + "_" + hashlib.sha1(os.path.abspath(py_file.parent).encode()).hexdigest()
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user and _writable(Path(user) / sub):
        return [Path(user) / sub]
    in_tree = py_file.parent / "__pycache__"
    if _writable(in_tree):
        return [in_tree]
    return [_user_cache_dir() / sub]


def _index_fresh(index: Path, digest: bytes, version: bytes | None) -> bool:
    try:
        data = index.read_bytes()
    except OSError:
        return False
    if version is not None and version not in data[:64]:  # the first pickle: numba's version string
        return False
    return digest in data  # the pickled (stamp, overloads): stamp = sha256 of the source file


def module_cached(py_file: Path, version: str | None = None) -> bool:
    """True if numba's cache holds a fresh index (this source, this numba) of at least one kernel of `py_file`.
    The index files' names are not needed: one that is not for the module's current source does not hold its
    sha256 (numba leaves the indexes of kernels that moved to another line, or were renamed, where they are)."""
    try:
        source = py_file.read_bytes()
    except OSError:
        return True  # not installed as source files (a zip, a frozen app): nothing to say
    digest = hashlib.sha256(source).digest()
    prefix = py_file.stem + "."
    suffix = f".py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}.nbi"
    v = None if version is None else version.encode()
    for folder in cache_dirs(py_file):
        try:
            names = [e.name for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(suffix)]
        except OSError:
            continue
        if any(_index_fresh(folder / n, digest, v) for n in names):
            return True
    return False


def kernels_cached(engine: str | None = None, *, query: bool = False) -> bool:
    """True unless numba will compile organscope's kernels for a segmentation (query=True: point queries) with
    `engine` (None: any engine) because its cache holds none of a module's kernels for the current source and
    numba version."""
    if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return True
    modules = (QUERY_KERNEL_MODULES if query else KERNEL_MODULES).get(engine or "", ALL_MODULES)
    version = _numba_version()
    return all(module_cached(PACKAGE / m, version) for m in modules)
