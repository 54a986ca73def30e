"""NIfTI-1/2 reading and writing with nibabel. NIfTI affines are already RAS+: no flips here."""
from __future__ import annotations

import gzip
import json
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..volume import Volume
from .atomic import atomic_paths
from ._common import make_volume, sidecar_path, wrap_write_error
from .limits import Limits, check_bytes, check_voxels, default_limits

#: Errors nibabel, gzip and zlib raise on files that are not NIfTI or are cut short.
READ_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, gzip.BadGzipFile, zlib.error,
               EOFError, OSError, ValueError, TypeError, OverflowError, MemoryError)

# nibabel logs its header checks ("data code 1 not supported; not attempting fix") straight to stderr; the
# errors they lead to are reported here in one sentence instead.
nib.imageglobals.logger.disabled = True

#: NIfTI header extension code used for the label-name JSON (6 = "comment").
JSON_ECODE = 6


def read_nifti(path: str | os.PathLike, *, limits: Limits | None = None) -> Volume:
    """Read a .nii / .nii.gz file. Integer data keeps its stored dtype (uncompressed files are
    memory-mapped); a non-identity scl_slope/scl_inter is applied, see `_rescale`.

    The header's size is checked against `limits` before any data is read; a gzip file is read to the end
    of its stream, so a corrupt file (bad CRC, wrong length, trailing garbage) is refused, not half-read."""
    source = str(path)
    limits = limits or default_limits()
    try:
        with nib.imageglobals.LoggingOutputSuppressor(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel's notes on odd headers: the checks below say what matters
            img = nib.load(source)
            if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
                raise InputError(f"{source} is not a NIfTI image.")
            header = img.header
            dtype = header.get_data_dtype()
            check_voxels(header.get_data_shape(), dtype.itemsize, source, limits)
            proxy = img.dataobj
            if _is_gzip(source):
                raw = _read_gzip_data(source, int(proxy.offset), header.get_data_shape(), dtype, limits)
            else:
                raw = np.asarray(proxy.get_unscaled())
            slope, inter = float(proxy.slope), float(proxy.inter)
            affine = img.affine
            qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    except READ_ERRORS as e:
        raise InputError(
            f"Could not read {source} as a NIfTI volume: the file is not NIfTI or is corrupt/truncated "
            f"({_reason(e)})."
        ) from None
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope == 0:
        slope, inter = 1.0, 0.0  # NIfTI: a zero or non-finite scl_slope means "no scaling"
    if qcode == 0 and scode == 0:
        warnings.warn(
            f"{source} has no orientation in its header (qform and sform codes are 0); "
            "its voxel axes are assumed to be L-R, P-A, I-S as nibabel does.",
            stacklevel=3,
        )
    data = raw if (slope, inter) == (1.0, 0.0) else _rescale(raw, slope, inter)
    meta = {"source": source, "format": "nifti", "qform_code": qcode, "sform_code": scode}
    return make_volume(data, affine, meta, source)


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError) or not text:
        return type(e).__name__
    return text[:120]


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


#: Bytes after the image data that a gzip stream may still hold (padding some writers add).
MAX_TRAILING_BYTES = 1 << 20


def _read_gzip_data(path: str, offset: int, shape, dtype: np.dtype, limits: Limits) -> np.ndarray:
    """The image data of a .nii.gz, decompressed into one buffer; the stream is read to its end so that gzip
    checks its CRC and length (nibabel's indexed or lazy reading would skip that)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    check_bytes(offset + n, path, limits)
    buf = bytearray(offset + n)
    view = memoryview(buf)
    got = 0
    with gzip.open(path, "rb") as f:
        while got < len(buf):
            k = f.readinto(view[got:])
            if not k:
                raise EOFError(f"the data stops after {max(got - offset, 0)} of {n} bytes")
            got += k
        extra = 0
        while True:  # to the end of the stream: gzip checks the CRC and the length there
            chunk = f.read(1 << 16)
            if not chunk:
                break
            extra += len(chunk)
            if extra > MAX_TRAILING_BYTES:
                raise ValueError("more data follows the image than its header declares")
    return np.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize, offset=offset).reshape(shape, order="F")


def _rescale(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Stored values -> HU: int16 for an integer shift whose result fits, else float32."""
    if slope == 1.0 and inter.is_integer() and np.issubdtype(raw.dtype, np.integer) and raw.size:
        lo, hi = int(raw.min()) + int(inter), int(raw.max()) + int(inter)
        if -32768 <= lo and hi <= 32767:
            out = raw.astype(np.int16)
            out += np.int16(inter)  # int16 maths is modulo 2**16 and every true result fits, so it is exact
            return out
    out = raw.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(inter)
    return out


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    codes: tuple[int, int] = (1, 1),
    sidecar: dict | None = None,
) -> None:
    """Atomically write `array` on `affine` (sform and qform both set, codes = (qform, sform);
    the qform gets code 0 if the affine has a shear it cannot represent).

    If `sidecar` is given it is written as JSON next to the image (x.nii.gz -> x.json) and
    embedded as a header extension; image and sidecar appear together or not at all.
    """
    path = Path(path)
    img = nib.Nifti1Image(array, None)
    img.set_sform(np.asarray(affine, dtype=float), code=int(codes[1]))
    img.set_qform(np.asarray(affine, dtype=float), code=int(codes[0]))
    if not np.allclose(img.get_qform(), affine, atol=1e-4):  # a shear: the qform cannot hold it
        img.set_qform(None, code=0)
    img.header.set_data_dtype(array.dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    targets = [path] if sidecar is None else [path, sidecar_path(path)]
    try:
        with atomic_paths(*targets) as temps:
            if sidecar is not None:
                text = json.dumps(sidecar, indent=2)
                img.header.extensions.append(nib.nifti1.Nifti1Extension(JSON_ECODE, text.encode()))
                temps[1].write_text(text + "\n")
            nib.save(img, str(temps[0]))
    except Exception as e:
        raise wrap_write_error(e, path) from None

