"""One binary NIfTI mask per organ present (uint8 0/1 on the scan's grid), named `<organ>.nii.gz`.

A new folder is filled under a temporary name and renamed when complete, so the folder appearing means
every mask is in it; into an existing folder each mask is written atomically on its own.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from ..segmentation import Segmentation
from ..errors import InputError


def write_masks(seg: Segmentation, folder: str | os.PathLike) -> list[Path]:
    """Write `<folder>/<organ>.nii.gz` for every organ present in `seg`; returns the paths written."""
    from ..io import save_volume, temp_dir_beside

    folder = Path(folder)
    labels = np.asarray(seg.labels.array)
    present = [int(v) for v in np.unique(labels) if v > 0]
    for v in present:
        name = seg.names.get(v)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InputError(f"Label value {v} has no usable organ name for a mask file ({name!r}).")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"Cannot write masks into {folder}: it is a file, not a folder.")
    if not folder.parent.is_dir():
        raise InputError(f"Cannot write masks into {folder}: the folder {folder.parent} does not exist.")
    fresh = not folder.exists()
    target = temp_dir_beside(folder) if fresh else folder  # made with 0o777 less the umask
    try:
        written = []
        for v in present:
            path = target / f"{seg.names[v]}.nii.gz"
            save_volume(seg.labels.with_array((labels == v).astype(np.uint8)), path)
            written.append(folder / path.name)
        if fresh:
            os.replace(target, folder)
    except BaseException:
        if fresh:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target)
        raise
    return written

