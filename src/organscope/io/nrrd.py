"""NRRD (.nrrd, .nhdr) with pynrrd. NRRD geometry is usually LPS; it is converted to RAS here."""
from __future__ import annotations

import gzip
import json
import os
import warnings
import zlib
from pathlib import Path

import nrrd as pynrrd
import numpy as np

from ..errors import GeometryError, InputError
from ..volume import Volume
from .atomic import atomic_paths
from ._common import external_data_path, make_volume, ras_to_lps, sidecar_path, wrap_write_error
from .limits import Limits, check_bytes, check_voxels, default_limits

#: NRRD 'space' values tied to the patient, and the signs that take their x, y, z to RAS.
SPACE_TO_RAS_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}

READ_ERRORS = (pynrrd.NRRDError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError,
               OverflowError, MemoryError, IndexError)


def read_nrrd(path: str | os.PathLike, *, limits: Limits | None = None, allow_external: bool = True,
              allowed_dir: str | os.PathLike | None = None) -> Volume:
    """Read a .nrrd or .nhdr file; array axis i follows the first 'space directions' vector.

    The header's sizes are checked against `limits` before the data is read; a 'data file' in the header is
    checked by `external_data_path` (allow_external, allowed_dir)."""
    source = str(path)
    limits = limits or default_limits()
    try:
        with open(source, "rb") as fh:
            header = pynrrd.read_header(fh)
            sizes = [int(v) for v in np.atleast_1d(header.get("sizes", []))]
            dtype = pynrrd.reader._determine_datatype(header)
            check_voxels(sizes, dtype.itemsize, source, limits)
            data_file = header.get("datafile", header.get("data file"))
            if data_file is not None:
                name = str(data_file)
                if name.upper().startswith("LIST") or " " in name.strip() or "%" in name:
                    raise InputError(f"{source} splits its data over several files, which is not supported.")
                header = dict(header)
                header.pop("datafile", None)
                header["data file"] = str(external_data_path(source, name, source, allow_external=allow_external,
                                                              allowed_dir=allowed_dir))
                data = _read_data(header, None, source, sizes, dtype, limits)
            else:
                data = _read_data(header, fh, source, sizes, dtype, limits)
    except READ_ERRORS as e:
        raise InputError(
            f"Could not read {source} as an NRRD volume: the file is not NRRD or is corrupt/truncated "
            f"({type(e).__name__})."
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        data, affine = _geometry(data, header, source)
    meta = {"source": source, "format": "nrrd", "space": header.get("space")}
    return make_volume(data, affine, meta, source)


def _read_data(header: dict, fh, source: str, sizes: list[int], dtype: np.dtype, limits: Limits) -> np.ndarray:
    """The voxel data; gzip data is inflated here with a cap (never more than the header declares)."""
    skips = int(header.get("lineskip", header.get("line skip", 0)) or 0) or \
        int(header.get("byteskip", header.get("byte skip", 0)) or 0)
    if str(header.get("encoding", "")).lower() not in ("gzip", "gz") or skips:
        return pynrrd.read_data(header, fh, source, index_order="F")
    n_bytes = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize
    if fh is None:
        with open(header["data file"], "rb") as f:
            compressed = f.read()
    else:
        compressed = fh.read()
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib
    raw = d.decompress(compressed, n_bytes)
    if len(raw) < n_bytes:
        raise EOFError(f"{len(raw)} of {n_bytes} data bytes")
    check_bytes(len(raw), source, limits)
    return np.frombuffer(raw, dtype=dtype, count=n_bytes // dtype.itemsize).reshape(sizes, order="F")


def _geometry(data: np.ndarray, header: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(data reduced to its 3 spatial axes, RAS affine) from the NRRD header."""
    space = str(header.get("space", "")).lower()
    if space not in SPACE_TO_RAS_SIGNS:
        what = f"the space '{header['space']}'" if "space" in header else "no 'space' field"
        raise GeometryError(
            f"{source} has {what}, so its axes cannot be placed in patient coordinates; "
            "save it with space 'left-posterior-superior' (LPS) or 'right-anterior-superior' (RAS)."
        )
    dirs = header.get("space directions")
    if dirs is None:
        raise GeometryError(f"{source} has no 'space directions'; its voxel size and orientation are unknown.")
    dirs = np.asarray(dirs, dtype=float)
    spatial = [ax for ax in range(dirs.shape[0]) if np.all(np.isfinite(dirs[ax]))]
    extra = [ax for ax in range(data.ndim) if ax not in spatial]
    if len(spatial) != 3 or dirs.shape[1] != 3:
        raise InputError(f"{source} has {len(spatial)} spatial axes; organscope needs a 3D volume.")
    if any(data.shape[ax] != 1 for ax in extra):
        raise InputError(
            f"{source} holds several values per voxel (shape {data.shape}); organscope needs one 3D scalar volume."
        )
    data = np.squeeze(data, axis=tuple(extra)) if extra else data
    origin = header.get("space origin")
    if origin is None or not np.all(np.isfinite(origin)):
        warnings.warn(f"{source} has no 'space origin'; its first voxel is placed at 0, 0, 0 mm.", stacklevel=3)
        origin = np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = dirs[spatial].T  # column i = direction of array axis i
    affine[:3, 3] = np.asarray(origin, dtype=float)
    return data, np.diag(SPACE_TO_RAS_SIGNS[space] + (1.0,)) @ affine


def write_nrrd(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, sidecar: dict | None = None) -> None:
    """Atomically write `array` (gzip, LPS space) on the RAS `affine`; optional JSON sidecar next to it."""
    path = Path(path)
    if path.suffix.lower() != ".nrrd":
        raise InputError(f"Cannot write {path}: only single-file .nrrd output is supported, not {path.suffix}.")
    lps = ras_to_lps(affine)
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    targets = [path] if sidecar is None else [path, sidecar_path(path)]
    try:
        with atomic_paths(*targets) as temps:
            if sidecar is not None:
                text = json.dumps(sidecar, indent=2)
                header["organscope_labels"] = json.dumps(sidecar, separators=(",", ":"))
                temps[1].write_text(text + "\n")
            pynrrd.write(str(temps[0]), np.asarray(array), header, index_order="F", compression_level=6)
    except Exception as e:
        raise wrap_write_error(e, path) from None
