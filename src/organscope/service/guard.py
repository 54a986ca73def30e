"""What the service checks in a scan file before it lets a reader touch it: that an upload names no other file,
that every file a by-path opening will read lies inside the allowed directory (symlinks resolved), and that the
header's declared size (dimensions x bytes per voxel, and what a compressed stream inflates to) is within the
service's caps. The headers are parsed here, independently of the io readers, so that a reader's own handling
of external data files or of sizes never decides what the service reads.

    check_upload(path, max_voxels=...)               a .nii/.nii.gz/.nrrd/.mha file that is self-contained
    check_path(path, allowed, max_voxels=...)        a file or DICOM folder, and every file it names, inside allowed
"""
from __future__ import annotations

import bz2
import gzip
import zlib
from pathlib import Path

from ..errors import InputError

#: Decompressed bytes allowed per voxel of the cap (a float32 volume of max_voxels voxels).
BYTES_PER_VOXEL_CAP = 4
MAX_HEADER_BYTES = 1 << 16
_CHUNK = 1 << 20


class Refused(InputError):
    """A file the service will not read: it names another file, or a file outside the allowed directory."""


class TooLarge(InputError):
    """A scan whose declared or inflated size passes the service's caps."""


# ---- header parsing ------------------------------------------------------------------------------------------------
_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_ITEMSIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_MET_ITEMSIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                 "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                 "MET_DOUBLE": 8}


def _nrrd_header(path: Path, name: str) -> tuple[dict[str, str], int]:
    """NRRD fields (lower-case keys) and the byte offset of the data after the header's blank line."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        magic = fh.readline(64)
        if not magic.startswith(b"NRRD"):
            raise InputError(f"{name} is not an NRRD file (it does not start with 'NRRD').")
        while True:
            line = fh.readline(4096)
            if fh.tell() > MAX_HEADER_BYTES:
                raise InputError(f"{name} has an NRRD header longer than {MAX_HEADER_BYTES} bytes.")
            text = line.decode("latin-1").rstrip("\r\n")
            if not line or not text.strip():
                return fields, fh.tell()
            if text.startswith("#") or ":=" in text:
                continue
            key, sep, value = text.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()


def _ints(text: str, what: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise InputError(f"{name} has an unreadable {what} ('{text[:60]}').")
    return values


# ---- size caps --------------------------------------------------------------------------------------------------
def _check_declared(dims: list[int], itemsize: int, name: str, max_voxels: int) -> int:
    """Declared data bytes, if dims and bytes are within the caps; TooLarge (one sentence) otherwise."""
    voxels = 1
    for d in dims:
        voxels *= int(d)
    if voxels > max_voxels:
        raise TooLarge(f"{name} declares {' x '.join(str(d) for d in dims)} = {voxels:,} voxels, more than this "
                       f"server's limit of {max_voxels:,}; crop or resample the scan, or restart the server with a "
                       "larger --max-voxels.")
    n_bytes = voxels * itemsize
    if n_bytes > max_voxels * BYTES_PER_VOXEL_CAP:
        raise TooLarge(f"{name} declares {n_bytes / 2**20:,.0f} MB of voxel data, more than this server's limit of "
                       f"{max_voxels * BYTES_PER_VOXEL_CAP / 2**20:,.0f} MB; convert it to int16 or restart the "
                       "server with a larger --max-voxels.")
    return n_bytes


def _inflates_beyond(path: Path, offset: int, limit: int, kind: str) -> bool:
    """Whether the compressed data from `offset` inflates to more than `limit` bytes; read a chunk at a time, so
    that a compression bomb costs at most `limit` bytes of work and one chunk of memory. `kind`: 'gzip' (all
    members, as gzip readers read them), 'bzip2', or 'zlib' (one zlib or gzip stream, as the MetaImage reader
    reads it). Corrupt data is left to the reader to report."""
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(offset)
            if kind in ("gzip", "bzip2"):
                stream = gzip.GzipFile(fileobj=raw) if kind == "gzip" else bz2.BZ2File(raw)
                with stream:
                    while chunk := stream.read(_CHUNK):
                        total += len(chunk)
                        if total > limit:
                            return True
                return False
            d = zlib.decompressobj(wbits=47)
            pending = b""
            while not d.eof:
                if not pending:
                    pending = raw.read(_CHUNK)
                    if not pending:
                        return False
                total += len(d.decompress(pending, _CHUNK))
                if total > limit:
                    return True
                pending = d.unconsumed_tail
    except (OSError, EOFError, zlib.error, ValueError):
        return False
    return False


def _too_large_inflated(name: str, n_bytes: int) -> TooLarge:
    return TooLarge(f"{name} inflates to more than the {n_bytes:,} bytes its header declares; the compressed "
                    "data is corrupt or a compression bomb, so it was not read.")


# ---- the checks -----------------------------------------------------------------------------------------------------
def check_file(path: Path, *, name: str, max_voxels: int, data_file_ok) -> None:
    """Check one scan file's header: its declared size, what its compressed data inflates to, and any data file
    it names (`data_file_ok(resolved_path, text)` raises if that file may not be read; None: refuse any)."""
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name, max_voxels)
    elif lower.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, name, max_voxels, data_file_ok)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path, name, max_voxels, data_file_ok)


def _check_nifti(path: Path, name: str, max_voxels: int) -> None:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # header only: the data is read later, through the reader
        shape, dtype = img.header.get_data_shape(), img.header.get_data_dtype()
    except Exception:  # noqa: BLE001 - an unreadable header: the reader (nibabel too) reports it in its words
        return
    _check_declared(list(shape), dtype.itemsize, name, max_voxels)


def _check_nrrd(path: Path, name: str, max_voxels: int, data_file_ok) -> None:
    fields, offset = _nrrd_header(path, name)
    external = next((fields[k] for k in ("data file", "datafile") if k in fields), None)
    data_path = path
    if external is not None:
        if data_file_ok is None:
            raise Refused(f"{name} is an NRRD header that names a separate data file; upload one self-contained "
                          ".nrrd file (data inside it).")
        if external.upper().startswith("LIST") or len(external.split()) != 1 or "%" in external:
            raise Refused(f"{name} splits its data over several files, which this server does not open.")
        data_path = data_file_ok((path.parent / external), external)
        offset = 0
    itemsize = _NRRD_ITEMSIZE.get(fields.get("type", "").lower(), 8)
    n_bytes = _check_declared(_ints(fields.get("sizes", ""), "sizes", name), itemsize, name, max_voxels)
    encoding = fields.get("encoding", "raw").lower()
    kind = {"gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2"}.get(encoding)
    if kind and _inflates_beyond(data_path, offset, n_bytes, kind):
        raise _too_large_inflated(name, n_bytes)


def _check_metaimage(path: Path, name: str, max_voxels: int, data_file_ok) -> None:
    from ..io.metaimage import read_header

    header, offset = read_header(path, name)  # as the reader reads it
    data_file = header["ElementDataFile"]
    data_path = path
    if data_file.upper() != "LOCAL":
        if data_file_ok is None:
            raise Refused(f"{name} is a MetaImage header whose ElementDataFile names another file; upload one "
                          "self-contained .mha file (ElementDataFile = LOCAL).")
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            raise Refused(f"{name} splits its data over several files, which this server does not open.")
        data_path = data_file_ok(path.parent / data_file, data_file)
        try:
            offset = max(int(header.get("HeaderSize", "0")), 0)  # -1 (data at the end): checked from the start
        except ValueError:
            raise InputError(f"{name} has an unreadable HeaderSize.") from None
    itemsize = _MET_ITEMSIZE.get(header.get("ElementType", ""), 8)
    n_bytes = _check_declared(_ints(header.get("DimSize", ""), "DimSize", name), itemsize, name, max_voxels)
    if header.get("CompressedData", "False").strip().lower() in ("true", "1", "yes") \
            and _inflates_beyond(data_path, offset, n_bytes, "zlib"):
        raise _too_large_inflated(name, n_bytes)


def check_upload(path: Path, *, name: str, max_voxels: int) -> None:
    """An uploaded file: self-contained (no header naming another file) and within the size caps."""
    try:
        check_file(path, name=name, max_voxels=max_voxels, data_file_ok=None)
    except OSError:
        raise InputError(f"The upload {name} could not be read back on the server.") from None


def inside(path: Path, allowed: Path) -> Path | None:
    """`path` with every symlink resolved, if it lies inside `allowed` (already resolved); None otherwise."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return resolved if resolved.is_relative_to(allowed) else None


def check_path(path: Path, allowed: Path, *, shown: str, max_voxels: int) -> None:
    """A scan opened by path (already resolved inside `allowed`): every file it will read, data files and DICOM
    slices included, resolves inside `allowed`; declared sizes within the caps. `shown`: its name in messages."""

    def data_file_ok(candidate: Path, text: str) -> Path:
        resolved = inside(candidate, allowed)
        if resolved is None:
            raise Refused(f"{shown} names a data file outside the directory this server may read; keep the header "
                          "and its data file together inside that directory.")
        if not resolved.is_file():
            raise InputError(f"{shown} names a data file that does not exist; keep it beside the header.")
        return resolved

    if path.is_dir() or not path.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        folder = path if path.is_dir() else path.parent
        for entry in sorted(folder.iterdir()):  # the DICOM reader reads every file of the folder
            if entry.is_file() and inside(entry, allowed) is None:
                raise Refused(f"The folder of {shown} holds {entry.name!r}, a link to a file outside the directory "
                              "this server may read; remove the link or copy the file into the folder.")
        return
    check_file(path, name=shown, max_voxels=max_voxels, data_file_ok=data_file_ok)
