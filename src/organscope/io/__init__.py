"""Reading CT volumes and writing label maps, with their geometry. The only place LPS<->RAS flips happen.

    load_volume(path) -> Volume            .nii .nii.gz .nrrd .nhdr .mha .mhd, a DICOM folder or file
    load_labels(path) -> Volume            a label map, names (if a sidecar exists) in meta["label_names"]
    save_labels(grid, labels, path, names) uint8/uint16 map on grid's exact affine + x.json sidecar
    save_volume(volume, path)              .nii, .nii.gz or .nrrd
    Limits, default_limits()               caps on voxels and decompressed bytes that every reader checks first
    atomic_paths(*targets)                 temp paths to write, each renamed onto its target on success
    write_text_atomic(path, text)          one text file, complete or absent

Format modules (nibabel, pynrrd, pydicom) are imported only when needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..volume import Volume
from ._common import sidecar_path
from .atomic import (atomic_paths, check_not_input, check_writable, commit, current_umask, remove_path, staged_path, temp_dir_beside,
                     write_text_atomic)
from .limits import Limits, default_limits
from .validate import validate_ct

#: Label value -> organ name (snake_case); 0 is background.
LabelNames = Mapping[int, str]

__all__ = [
    "LabelNames", "load_volume", "load_labels", "save_labels", "save_volume", "read_label_names",
    "validate_ct", "sidecar_path", "volume_format", "atomic_paths", "write_text_atomic", "temp_dir_beside",
    "current_umask", "Limits", "default_limits", "staged_path", "commit", "remove_path", "check_not_input", "check_writable",
]

_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
             ".mhd": "metaimage"}


def volume_format(path: str | os.PathLike) -> str:
    """'nifti', 'nrrd', 'metaimage' or 'dicom' for an existing path; InputError otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path.")
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    from .dicom import is_dicom_file

    if is_dicom_file(p):
        return "dicom"
    raise InputError(
        f"{p} is not a format organscope reads; give a .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd file, "
        "or a DICOM folder."
    )


def _read(path: str | os.PathLike, series_uid: str | None, *, limits: Limits | None = None,
          allow_external: bool = True, allowed_dir: str | os.PathLike | None = None) -> Volume:
    fmt = volume_format(path)
    if fmt == "dicom":
        from .dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid, limits=limits)
    if series_uid is not None:
        raise InputError(f"series_uid= applies to DICOM input only, but {path} is a {fmt} file.")
    if fmt == "nifti":
        from .nifti import read_nifti

        return read_nifti(path, limits=limits)
    if fmt == "nrrd":
        from .nrrd import read_nrrd as reader
    else:
        from .metaimage import read_metaimage as reader
    return reader(path, limits=limits, allow_external=allow_external, allowed_dir=allowed_dir)


def load_volume(path: str | os.PathLike, *, series_uid: str | None = None, limits: Limits | None = None,
                allow_external: bool = True, allowed_dir: str | os.PathLike | None = None) -> Volume:
    """Read a CT volume (RAS affine) and check that it is a plausible CT in HU.

    `series_uid` picks one series when a DICOM folder holds several. `limits` caps voxels and decompressed bytes
    (default: `limits.default_limits()`), checked before anything is allocated. A MetaImage/NRRD header that keeps
    its data in a separate file is refused with allow_external=False (uploads); otherwise that file must lie in
    `allowed_dir` if given, else in the header's own folder (an absolute path or `..` leaving it is refused).
    """
    volume = _read(path, series_uid, limits=limits, allow_external=allow_external, allowed_dir=allowed_dir)
    validate_ct(volume, source=_source(volume, path))
    return volume


def _source(volume: Volume, path) -> str:
    return f"The DICOM series in {path}" if volume.meta.get("format") == "dicom" else str(path)


def load_labels(path: str | os.PathLike, *, limits: Limits | None = None, allow_external: bool = True,
                allowed_dir: str | os.PathLike | None = None) -> Volume:
    """Read a label map; its sidecar names, if any, go to meta["label_names"] ({int: name})."""
    volume = _read(path, None, limits=limits, allow_external=allow_external, allowed_dir=allowed_dir)
    arr = volume.array
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{path} holds non-integer values, so it is not a label map.")
    side = sidecar_path(path)
    if side.is_file():
        volume.meta["label_names"] = read_label_names(side)
    return volume


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """{value: name} from a sidecar written by save_labels ({"labels": {name: value}})."""
    try:
        labels = json.loads(Path(path).read_text())["labels"]
        return {int(v): str(k) for k, v in labels.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path} is not a label-name file like {{\"labels\": {{\"liver\": 5}}}}.") from None


def save_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Atomically write `volume` as .nii / .nii.gz / .nrrd with its dtype and exact affine."""
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    _write(array, volume, path, sidecar=None)


def save_labels(grid: Volume, labels: np.ndarray | Volume, path: str | os.PathLike, names: LabelNames,
                extra: dict | None = None) -> None:
    """Atomically write `labels` on `grid`'s exact grid as uint8 (uint16 above 255), plus x.json with
    {"labels": {"background": 0, name: value, ...}} next to it (also embedded in NIfTI headers); `extra` adds
    keys to x.json (the anatomy check, confidence)."""
    arr = np.asarray(labels.array if isinstance(labels, Volume) else labels)
    if arr.shape != grid.shape:
        raise InputError(f"The label map's shape {arr.shape} does not match the grid {grid.shape}.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise InputError("The label map holds non-integer values; labels must be integers 0..65535.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    top = max([hi] + [float(k) for k in names])
    if lo < 0 or top > 65535:
        raise InputError(f"Label values must lie in 0..65535, got {lo:g}..{top:g}.")
    out = arr.astype(np.uint8 if top <= 255 else np.uint16, copy=False)
    sidecar = _sidecar(names, np.flatnonzero(np.bincount(out.ravel(order="K"))))
    if extra:
        sidecar = {**sidecar, **extra}
    _write(out, grid, path, sidecar=sidecar)


def _sidecar(names: LabelNames, present: np.ndarray) -> dict:
    names = {int(k): str(v) for k, v in names.items()}
    names.setdefault(0, "background")
    unnamed = sorted(set(int(v) for v in present) - set(names))
    if unnamed:
        raise InputError(f"Label value(s) {unnamed} in the label map have no name; add them to names.")
    if len(set(names.values())) != len(names):
        raise InputError("Two label values share a name; each organ name must be used once.")
    return {"labels": {names[k]: k for k in sorted(names)}}


def _write(array: np.ndarray, grid: Volume, path: str | os.PathLike, *, sidecar: dict | None) -> None:
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from .nifti import write_nifti

        codes = (grid.meta.get("qform_code") or 1, grid.meta.get("sform_code") or 1)
        write_nifti(array, grid.affine, path, codes=codes, sidecar=sidecar)
    elif name.endswith(".nrrd"):
        from .nrrd import write_nrrd

        write_nrrd(array, grid.affine, path, sidecar=sidecar)
    else:
        raise InputError(f"Cannot write {path}: use a .nii.gz, .nii or .nrrd file name.")
