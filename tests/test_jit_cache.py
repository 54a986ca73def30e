"""The first-run notice: organscope.jit_cache tells whether numba's on-disk cache holds the kernels (without
importing numba), and `organscope segment` prints one line when it does not. The file layout is checked against
numba's own cache objects; the end-to-end test runs the CLI twice on the bundled scan with NUMBA_CACHE_DIR in an
empty folder (cnn3d: one kernel to compile, a few seconds a run)."""
from __future__ import annotations

import hashlib
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import organscope
from organscope import cli, jit_cache

REPO = Path(__file__).resolve().parents[1]
SCAN = Path(organscope.__file__).resolve().parent / "data" / "okbp_validation_222.nii.gz"


def _fake_index(folder: Path, source: bytes, version: str, name="mod._kernel-3") -> Path:
    """An index file as numba writes it: its version (a pickled str), then the pickled (source sha256, overloads)."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = f".py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}.nbi"
    path = folder / f"{name}{tag}"
    path.write_bytes(pickle.dumps(version) + pickle.dumps((hashlib.sha256(source).digest(), {"sig": "mod.1.nbc"})))
    return path


def test_an_index_counts_only_for_the_current_source_and_numba(tmp_path, monkeypatch):
    src = tmp_path / "pkg" / "mod.py"
    src.parent.mkdir()
    src.write_text("import numba\n\n@numba.njit(cache=True)\ndef _kernel(x):\n    return x\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    (folder,) = jit_cache.cache_dirs(src)
    assert folder.parent == cache and folder.name.startswith("pkg_")
    assert not jit_cache.module_cached(src, "0.68.1")  # nothing there
    _fake_index(folder, src.read_bytes(), "0.68.1")
    assert jit_cache.module_cached(src, "0.68.1")
    assert not jit_cache.module_cached(src, "0.69.0")  # another numba ignores it
    src.write_text(src.read_text() + "\n# edited\n")  # an edited module is compiled again
    assert not jit_cache.module_cached(src, "0.68.1")
    _fake_index(folder, src.read_bytes(), "0.68.1", name="mod._kernel-4")  # ... under its new line
    assert jit_cache.module_cached(src, "0.68.1")


def test_the_layout_is_numbas(monkeypatch):
    """Folder and file names as numba's own cache objects have them, for every module the check reads."""
    import importlib

    import numba

    assert jit_cache._numba_version() == numba.__version__
    for rel in jit_cache.ALL_MODULES:
        mod = importlib.import_module("organscope." + rel[:-3].replace("/", "."))
        kernels = [f for f in vars(mod).values() if getattr(f, "_cache", None) is not None
                   and getattr(f._cache, "_cache_path", None)]
        assert kernels, rel
        for f in kernels:
            index = Path(f._cache._cache_file._index_path)
            assert [index.parent] == jit_cache.cache_dirs(jit_cache.PACKAGE / rel), rel
            assert index.name.startswith(Path(rel).stem + ".") and index.name.endswith(
                f".py{sys.version_info[0]}{sys.version_info[1]}{sys.abiflags}.nbi")
    # with NUMBA_CACHE_DIR, numba's folder for a module: the same sub-folder name
    from numba.core.caching import _CacheLocator

    py = jit_cache.PACKAGE / "sampling" / "gather.py"
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/tmp/somewhere")
    assert jit_cache.cache_dirs(py) == [Path("/tmp/somewhere") / _CacheLocator.get_suitable_cache_subpath(str(py))]


def test_the_check_is_cheap_and_off_without_jit(monkeypatch, tmp_path):
    jit_cache.kernels_cached()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jit_cache.kernels_cached()
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.010, times
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not jit_cache.kernels_cached("sparse")
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    assert jit_cache.kernels_cached("sparse")


def test_the_cli_prints_the_notice_with_its_progress_output(capsys, tmp_path, monkeypatch, phantom_files,
                                                            synthetic_model_path):
    monkeypatch.setattr(jit_cache, "kernels_cached", lambda engine=None, query=False: False)
    argv = ["segment", "-i", str(phantom_files["RAS"]), "-o", str(tmp_path / "out.nii.gz"), "--model",
            str(synthetic_model_path), "--threads", "1"]
    assert cli.main(argv + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == jit_cache.NOTICE and err.count(jit_cache.NOTICE) == 1, err
    assert cli.main(argv + ["--no-progress"]) == 0  # scripts keep their one line
    assert jit_cache.NOTICE not in capsys.readouterr().err


def test_a_query_on_a_terminal_says_it_is_compiling(capsys, monkeypatch):
    asked = []
    monkeypatch.setattr(jit_cache, "kernels_cached", lambda engine=None, query=False: asked.append(query) or False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["query", str(SCAN), "--point=-300,-304.7,-81"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == jit_cache.NOTICE and asked == [True]
    assert set(jit_cache.QUERY_KERNEL_MODULES["sparse"]) <= set(jit_cache.ALL_MODULES)


def test_first_run_on_an_empty_numba_cache_says_so_and_the_second_does_not(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("NUMBA_DISABLE_JIT", None)
    (tmp_path / "numba").mkdir()

    def segment(i: int) -> str:
        res = subprocess.run([sys.executable, "-m", "organscope.cli", "segment", "-i", str(SCAN), "-o",
                              str(tmp_path / f"out{i}.nii.gz"), "--engine", "cnn3d", "--threads", "1", "--progress"],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stderr

    first = segment(1)
    assert first.splitlines()[0] == jit_cache.NOTICE, first
    assert list((tmp_path / "numba").rglob("*.nbi"))  # numba did cache there
    second = segment(2)
    assert jit_cache.NOTICE not in second and "organ(s) found" in second, second


def test_every_module_with_cached_kernels_is_checked():
    """A new module with @njit(cache=True) kernels must be added to jit_cache.KERNEL_MODULES."""
    found = {p.relative_to(jit_cache.PACKAGE).as_posix() for p in jit_cache.PACKAGE.rglob("*.py")
             if "cache=True" in p.read_text()} - {"jit_cache.py"}
    assert found == set(jit_cache.ALL_MODULES)
