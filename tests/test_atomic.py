"""Atomic writes (organscope.io.atomic): complete or absent, the usual permissions from the umask, and no module
that changes the process-wide umask (a race under the threaded server)."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from organscope.io import atomic_paths, current_umask, save_labels, write_text_atomic
from organscope.volume import Volume

SRC = Path(__file__).resolve().parents[1] / "src" / "organscope"


def test_no_module_changes_the_umask():
    calls = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bos\.umask\b|from os import .*\bumask\b", line)]
    assert calls == [], "os.umask called (changes it for every thread): " + ", ".join(calls)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)  # the test itself may set it: it runs alone
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask_027):
    assert current_umask() == 0o027
    assert current_umask() == 0o027


def test_atomic_files_get_the_umask_permissions(tmp_path, umask_027):
    write_text_atomic(tmp_path / "a.txt", "x\r\ny")
    assert (tmp_path / "a.txt").read_bytes() == b"x\r\ny"
    assert _mode(tmp_path / "a.txt") == 0o640
    grid = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4))
    save_labels(grid, np.ones(grid.shape, np.uint8), tmp_path / "l.nii.gz", {1: "liver"})
    assert _mode(tmp_path / "l.nii.gz") == 0o640 and _mode(tmp_path / "l.json") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "l.json", "l.nii.gz"]


def test_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_paths(tmp_path / "keep.txt", tmp_path / "new.txt") as (a, b):
            a.write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_masks_folder_gets_the_umask_permissions(tmp_path, umask_027):
    from organscope.outputs import write_masks
    from organscope.segmentation import Segmentation

    grid = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    lab = np.zeros(grid.shape, np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    write_masks(Segmentation(grid.with_array(lab), {1: "liver"}, {}), tmp_path / "m")
    assert _mode(tmp_path / "m") == 0o750 and _mode(tmp_path / "m" / "liver.nii.gz") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
