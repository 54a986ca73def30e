"""A small reader for ITK MetaImage (.mha, .mhd + raw). Geometry is LPS; it is converted to RAS here.

Supported: 3D scalar images, ElementDataFile LOCAL or one raw file, CompressedData (zlib or gzip),
TransformMatrix (alias Rotation/Orientation), Offset (alias Position/Origin), ElementSpacing.
Like ITK, AnatomicalOrientation is informational only and kept in `meta`.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError
from ..volume import Volume
from ._common import external_data_path, lps_to_ras, make_volume
from .limits import Limits, check_voxels, default_limits

ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
MAX_HEADER_BYTES = 1 << 16


def read_metaimage(path: str | os.PathLike, *, limits: Limits | None = None, allow_external: bool = True,
                   allowed_dir: str | os.PathLike | None = None) -> Volume:
    """Read a .mha or .mhd MetaImage; array axis i is the fastest-varying axis of the file.

    DimSize is checked against `limits` before the data is read; an ElementDataFile other than LOCAL is checked
    by `external_data_path` (allow_external, allowed_dir)."""
    path = Path(path)
    source = str(path)
    limits = limits or default_limits()
    header, data_offset = read_header(path, source)
    dims = _ints(header, "DimSize", source)
    ndims = _ints(header, "NDims", source, [len(dims)])[0]
    if _ints(header, "ElementNumberOfChannels", source, [1])[0] != 1:
        raise InputError(f"{source} has several channels per voxel; organscope needs one scalar CT volume.")
    if len(dims) != ndims or ndims != 3:
        raise InputError(f"{source} has {ndims} dimension(s) {tuple(dims)}: organscope needs a 3D CT volume.")
    etype = header.get("ElementType", "")
    if etype not in ELEMENT_TYPES:
        raise InputError(f"{source} has the unsupported ElementType '{etype}'.")
    msb = _bool(header.get("ElementByteOrderMSB", header.get("BinaryDataByteOrderMSB", "False")))
    dtype = np.dtype(ELEMENT_TYPES[etype]).newbyteorder(">" if msb else "<")
    check_voxels(dims, dtype.itemsize, source, limits)
    external = {"allow_external": allow_external, "allowed_dir": allowed_dir}
    try:
        data = _read_data(path, header, data_offset, dims, dtype, source, external)
    except (OSError, ValueError, MemoryError) as e:
        raise InputError(f"Could not read the data of {source} ({type(e).__name__}); the file is corrupt or "
                         "truncated.") from None
    affine = lps_to_ras(_lps_affine(header, source))
    meta = {"source": source, "format": "metaimage", "anatomical_orientation": header.get("AnatomicalOrientation")}
    return make_volume(data, affine, meta, source)


def read_header(path: Path, source: str) -> tuple[dict[str, str], int]:
    """Key = value lines up to and including ElementDataFile; returns (header, byte offset after it). `source`
    names the file in messages (the service names an upload by the client's file name)."""
    header: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            while True:
                line = f.readline(4096)
                if not line or f.tell() > MAX_HEADER_BYTES:
                    break
                key, sep, value = line.decode("latin-1").partition("=")
                if not sep:
                    if line.strip():
                        break
                    continue
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    return header, f.tell()
    except OSError as e:
        raise InputError(f"Could not read {source}: {e.strerror or e}.") from None
    raise InputError(f"{source} is not a MetaImage file (no 'ElementDataFile' line in a text header).")


def _read_data(path: Path, header: dict, offset: int, dims: list[int], dtype: np.dtype, source: str,
               external: dict) -> np.ndarray:
    """Voxel data as an (x, y, z) array, x fastest as stored."""
    data_file = header["ElementDataFile"]
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            raise InputError(f"{source} splits its data over several files, which is not supported.")
        path = external_data_path(path, data_file, source, **external)
        offset = _ints(header, "HeaderSize", source, [0])[0]
    n_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if offset < 0:  # HeaderSize = -1: the data is the last n_bytes of the file
        offset = max(path.stat().st_size - n_bytes, 0)
    if _bool(header.get("CompressedData", "False")):
        try:
            # zlib or gzip, never inflated beyond what DimSize declares (a compression bomb stops there)
            raw = zlib.decompressobj(wbits=47).decompress(path.read_bytes()[offset:], n_bytes)
        except zlib.error:
            raise InputError(f"{source} has corrupt compressed data.") from None
        if len(raw) < n_bytes:
            raise InputError(f"{source} is truncated: {len(raw)} of {n_bytes} data bytes.")
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims))).reshape(dims, order="F")
    available = path.stat().st_size - offset
    if available < n_bytes:
        raise InputError(f"{source} is truncated: {max(available, 0)} of {n_bytes} data bytes.")
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(dims), order="F")


def _lps_affine(header: dict, source: str) -> np.ndarray:
    """Voxel -> LPS mm. TransformMatrix lists the direction of axis 0, then axis 1, then axis 2 (as ITK reads it)."""
    spacing_key = "ElementSpacing" if "ElementSpacing" in header else "ElementSize"
    if spacing_key not in header:
        raise GeometryError(f"{source} has no ElementSpacing; its voxel size is unknown.")
    spacing = _floats(header, spacing_key, source, 3)
    matrix_key = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if k in header), None)
    directions = _floats(header, matrix_key, source, 9).reshape(3, 3) if matrix_key else np.eye(3)
    offset_key = next((k for k in ("Offset", "Position", "Origin") if k in header), None)
    origin = _floats(header, offset_key, source, 3) if offset_key else np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = directions.T * spacing  # column i = direction of axis i times its spacing
    affine[:3, 3] = origin
    return affine


def _floats(header: dict, key: str, source: str, n: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in header[key].split()])
    except ValueError:
        values = np.array([])
    if values.size != n:
        raise GeometryError(f"{source} has an unreadable {key} ('{header[key]}'); expected {n} numbers.")
    return values


def _ints(header: dict, key: str, source: str, default: list[int] | None = None) -> list[int]:
    if key not in header and default is not None:
        return default
    try:
        return [int(v) for v in header[key].split()]
    except (KeyError, ValueError):
        raise InputError(f"{source} has a missing or unreadable {key}.") from None


def _bool(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")
