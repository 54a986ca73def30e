"""Helpers shared by the readers and writers: LPS<->RAS, building a Volume, write errors (atomic writes: atomic.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError, OrganscopeError
from ..volume import Volume
from .atomic import atomic_paths  # noqa: F401  (its old home; import it from organscope.io)

#: Flips x and y: maps LPS coordinates to RAS and back (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Affine mapping voxels to LPS mm -> affine mapping voxels to RAS mm."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=float)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Affine mapping voxels to RAS mm -> affine mapping voxels to LPS mm."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=float)


def squeeze_to_3d(array: np.ndarray, source: str) -> np.ndarray:
    """Drop trailing singleton axes beyond the third; raise InputError if the data is not one 3D volume."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise InputError(
            f"{source} has {array.ndim} dimensions {tuple(array.shape)} (several volumes or channels); "
            "organscope needs a single 3D CT volume."
        )
    if array.size == 0:
        raise InputError(f"{source} is empty (shape {tuple(array.shape)}).")
    if array.ndim < 3 or min(array.shape) < 2:
        raise InputError(
            f"{source} is 2D (shape {tuple(array.shape)}): organscope needs a CT volume with several slices."
        )
    return array


def native(array: np.ndarray) -> np.ndarray:
    """The array in native byte order (copies only if it is not)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def make_volume(array: np.ndarray, affine: np.ndarray, meta: dict, source: str) -> Volume:
    """Build a Volume, turning shape and geometry problems into messages that name the file."""
    array = native(squeeze_to_3d(array, source))
    try:
        return Volume(array, affine, meta)
    except GeometryError as e:
        raise GeometryError(f"{source} has unusable geometry: {_lower_first(str(e))}") from None


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def wrap_write_error(error: Exception, path: str | os.PathLike) -> OrganscopeError:
    """One-sentence project error for a failed write."""
    if isinstance(error, OrganscopeError):
        return error
    return InputError(f"Could not write {path}: {type(error).__name__}: {error}.")


def sidecar_path(path: str | os.PathLike) -> Path:
    """x.nii.gz / x.nii / x.nrrd -> x.json next to it."""
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def external_data_path(header_path: str | os.PathLike, name: str, source: str, *, allow_external: bool = True,
                       allowed_dir: str | os.PathLike | None = None) -> Path:
    """The separate data file `name` that a MetaImage/NRRD header at `header_path` refers to, checked.

    allow_external=False refuses any separate data file (uploads: only the header was given). Otherwise the file
    must lie, after resolving links, inside `allowed_dir` if given, else inside the header's own folder: an
    absolute path or a `..` that leaves it is refused with one sentence."""
    if not allow_external:
        raise InputError(f"{source} keeps its voxel data in a separate file ({name}), which is not accepted here; "
                         "give a single-file .mha or .nrrd instead.")
    base = Path(header_path).parent
    given = Path(name)
    target = given if given.is_absolute() else base / given
    root = Path(allowed_dir if allowed_dir is not None else base).resolve()
    real = target.resolve()
    if not real.is_relative_to(root):
        how = "an absolute path" if given.is_absolute() else "a relative path"
        raise InputError(f"{source} names its data file {name!r}, {how} that points outside {root}; keep the data "
                         "file in the header's folder, or save the volume as a single-file .mha or .nrrd.")
    if not real.is_file():
        raise InputError(f"{source} refers to the data file {target}, which does not exist.")
    return real
