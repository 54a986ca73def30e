"""DICOM CT series -> Volume, with pydicom (+ pylibjpeg for JPEG 2000 / JPEG-LS pixel data).

Array axes: i = column index (along the row direction cosine), j = row index, k = slice in the order
of increasing position along the slice normal (row cosine x column cosine). LPS -> RAS here.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import DicomSeriesError, InputError
from ..volume import Volume
from ._common import lps_to_ras, make_volume
from .limits import Limits, check_voxels, default_limits

#: A step this many times the median step means slices are missing.
GAP_FACTOR = 1.5
#: Steps differing from the median by more than this fraction make the series uneven.
UNEVEN_TOLERANCE = 0.10
#: Slices closer than this (mm) are at the same position.
DUPLICATE_MM = 0.01
GEOMETRY_TAGS = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder."""

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.modality}{desc}, {len(self.files)} slices)"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if `path` is a file with a DICOM header."""
    try:
        pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return False
    return True


def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Image series (files with pixel geometry) in `folder`, not recursive; other files are skipped."""
    groups: dict[str, list] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
            continue
        if all(tag in ds for tag in GEOMETRY_TAGS) and "SeriesInstanceUID" in ds:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    return [
        SeriesInfo(uid, str(items[0][1].get("Modality", "?")), str(items[0][1].get("SeriesDescription", "")),
                   tuple(f for f, _ in items))
        for uid, items in groups.items()
    ]


def read_dicom_series(path: str | os.PathLike, *, series_uid: str | None = None, limits: Limits | None = None
                      ) -> Volume:
    """Read the CT series in a folder (or the series of one DICOM file, from its folder). The series' size
    (rows x columns x slices) is checked against `limits` before the pixel data is read."""
    path = Path(path)
    limits = limits or default_limits()
    if path.is_file():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
            raise InputError(f"{path} is not a readable DICOM file.") from None
        if series_uid is None and str(ds.get("Modality", "")) == "RTSTRUCT":
            refs = sorted(referenced_series_uids(ds))
            series_uid = refs[0] if len(refs) == 1 else None
        else:
            series_uid = series_uid or str(ds.get("SeriesInstanceUID", "")) or None
        path = path.parent
    series = _pick_series(path, find_series(path), series_uid)
    if series.modality != "CT":
        warnings.warn(f"The DICOM series in {path} has modality {series.modality}, not CT.", stacklevel=3)
    _check_no_broken_slices(path, series)
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    check_voxels((_int_tag(first, "Rows", path), _int_tag(first, "Columns", path), len(series.files)), 4,
                 f"The DICOM series in {path}", limits)
    datasets = [_read_slice(f, path) for f in series.files]
    _check_consistent(datasets, path)
    order, slice_vec = _sort_and_check_positions(datasets, path)
    datasets = [datasets[k] for k in order]
    array = _pixels(datasets, path)
    affine = lps_to_ras(_lps_affine(datasets[0], slice_vec))
    meta = {"source": str(path), "format": "dicom", "series_uid": series.uid, "modality": series.modality,
            "series_description": series.description,
            "frame_of_reference_uid": str(datasets[0].get("FrameOfReferenceUID", "") or ""),
            # slice k of the array <- these files (for DICOM-SEG and other outputs that reference the source)
            "source_files": [str(ds.filename) for ds in datasets],
            "sop_instance_uids": [sop_instance_uid(ds) for ds in datasets]}
    return make_volume(array, affine, meta, f"The DICOM series in {path}")


def _check_no_broken_slices(folder: Path, series: SeriesInfo) -> None:
    """DicomSeriesError if a DICOM file of the folder (the 'DICM' mark) cannot be read, or belongs to the series
    but lacks its geometry: a truncated slice would otherwise be left out silently."""
    chosen = set(series.files)
    for f in sorted(folder.iterdir()):
        if f in chosen or not f.is_file() or f.name.startswith("."):
            continue
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:] != b"DICM":
                    continue
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            broken = str(ds.get("SeriesInstanceUID", "") or "") in ("", series.uid)  # every DICOM object has one
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            broken = True
        if broken:
            raise DicomSeriesError(f"The slice {f.name} in {folder} cannot be read completely; the file is "
                                   "truncated or corrupt: re-export the series (or move the file away).")


def _int_tag(ds, tag: str, folder: Path) -> int:
    try:
        return int(ds.get(tag))
    except (TypeError, ValueError):
        raise DicomSeriesError(f"The DICOM series in {folder} has a slice without a usable {tag} "
                               f"({Path(ds.filename).name}); the file is truncated or corrupt.") from None


def _read_slice(f: Path, folder: Path):
    """One slice with its pixel data; DicomSeriesError naming the file if it is truncated or unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on odd files: the checks below say what matters
            ds = pydicom.dcmread(f)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError) as e:
        raise DicomSeriesError(f"The slice {f.name} in {folder} cannot be read ({type(e).__name__}); the file is "
                               "truncated or corrupt: re-export the series.") from None
    missing = [t for t in (*GEOMETRY_TAGS, "PixelData") if t not in ds]
    if missing:
        raise DicomSeriesError(f"The slice {f.name} in {folder} lacks {', '.join(missing)}; the file is truncated "
                               "or corrupt: re-export the series.")
    return ds


def sop_instance_uid(ds) -> str:
    """The slice's SOPInstanceUID, from the file meta header when an anonymiser blanked the dataset's."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return uid


#: Modalities of radiotherapy and other derived objects that share a clinic export folder with the CT;
#: RTDOSE grids have image geometry but are never the scan to segment.
NON_SCAN_MODALITIES = frozenset({"RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "RTRECORD", "REG", "SEG", "SR",
                                 "PR", "KO", "RWV", "DOC", "PLAN"})


def _listing(found: list[SeriesInfo]) -> str:
    def one(s: SeriesInfo) -> str:
        desc = f"'{s.description}'" if s.description else "no description"
        return f"{desc} ({s.modality}, {len(s.files)} slices, UID {s.uid})"

    return "; ".join(one(s) for s in found)


def referenced_series_uids(ds) -> set[str]:
    """SeriesInstanceUIDs an RTSTRUCT dataset refers to (Referenced Frame of Reference Sequence)."""
    out = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uid = str(series.get("SeriesInstanceUID", "") or "")
                if uid:
                    out.add(uid)
    return out


def find_rtstructs(folder: str | os.PathLike) -> list[Path]:
    """RT Structure Set files directly in `folder`."""
    out = []
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
            continue
        if str(ds.get("Modality", "")) == "RTSTRUCT":
            out.append(f)
    return out


def _rtstruct_choice(folder: Path, candidates: list[SeriesInfo]) -> SeriesInfo | None:
    """The one candidate series that the folder's RTSTRUCT(s) refer to, if exactly one is."""
    uids = {s.uid for s in candidates}
    referenced: set[str] = set()
    for f in find_rtstructs(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
            continue
        referenced |= referenced_series_uids(ds) & uids
    if len(referenced) == 1:
        uid = referenced.pop()
        return next(s for s in candidates if s.uid == uid)
    return None


def _pick_series(folder: Path, found: list[SeriesInfo], series_uid: str | None) -> SeriesInfo:
    """The scan of a folder: the series asked for; else its only image series; else (a clinic export with
    RTSTRUCT, RTPLAN and RTDOSE beside the CT) its only CT series, or the CT series its RTSTRUCT refers to."""
    if not found:
        raise DicomSeriesError(
            f"The folder {folder} contains no DICOM image slices; point to the folder that holds the CT's .dcm files."
        )
    if series_uid is not None:
        for s in found:
            if s.uid == series_uid:
                return s
        raise DicomSeriesError(f"The folder {folder} has no series {series_uid}; it holds: {_listing(found)}.")
    scans = [s for s in found if s.modality not in NON_SCAN_MODALITIES]
    if not scans:
        raise DicomSeriesError(f"The folder {folder} holds no CT slices, only {_listing(found)}; point to the "
                               "folder that holds the CT's .dcm files.")
    ct = [s for s in scans if s.modality == "CT"]
    candidates = ct or scans
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        chosen = _rtstruct_choice(folder, candidates)
        if chosen is not None:
            return chosen
    shown = candidates or found
    raise DicomSeriesError(
        f"The folder {folder} holds {len(shown)} DICOM series ({_listing(shown)}); choose one with "
        "--series-uid UID (series_uid= in Python)."
    )


def _check_consistent(datasets: list, folder: Path) -> None:
    first = datasets[0]
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    for ds in datasets[1:]:
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomSeriesError(f"The DICOM series in {folder} mixes slice sizes ({first.Rows}x{first.Columns} "
                                   f"and {ds.Rows}x{ds.Columns}).")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=float), np.asarray(first.PixelSpacing, dtype=float),
                           atol=1e-4):
            raise DicomSeriesError(f"The DICOM series in {folder} mixes pixel spacings.")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop0, atol=1e-4):
            raise DicomSeriesError(f"The DICOM series in {folder} mixes slice orientations (a localizer or a "
                                   "reformat in the same series?).")


def _sort_and_check_positions(datasets: list, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(order of slices along the normal, LPS vector from one slice to the next)."""
    n = len(datasets)
    if n < 2:
        raise DicomSeriesError(
            f"The DICOM series in {folder} has a single slice, so it is 2D: organscope needs a CT volume "
            "with several slices."
        )
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    dist = positions[order] @ normal
    steps = np.diff(dist)
    where = f"The DICOM series in {folder}"
    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        k = int(dup[0])
        raise DicomSeriesError(
            f"{where} has slices at duplicated positions "
            f"(slices {k + 1} and {k + 2} are both at {dist[k]:.2f} mm along the normal); it may mix "
            "several acquisitions: export one of them."
        )
    expected = float(np.median(steps))
    spacing_tag = float(datasets[0].get("SpacingBetweenSlices", 0) or 0)
    thickness = float(datasets[0].get("SliceThickness", 0) or 0)
    if steps.size < 3 and spacing_tag > 0:
        expected = spacing_tag
    elif steps.size < 3 and thickness > 0:  # too few steps for a median: slices are rarely farther apart
        expected = min(expected, thickness)
    gaps = np.flatnonzero(steps > GAP_FACTOR * expected)
    if gaps.size:
        k = int(gaps[0])
        missing = max(int(round(steps[k] / expected)) - 1, 1)
        more = f" (and {gaps.size - 1} more gap(s))" if gaps.size > 1 else ""
        raise DicomSeriesError(
            f"{where} has a gap between slice {k + 1} and {k + 2} ({steps[k]:.1f} mm, expected {expected:.1f} mm)"
            f"{more}: {missing} slice{' appears' if missing == 1 else 's appear'} to be missing."
        )
    uneven = np.flatnonzero(np.abs(steps - expected) > UNEVEN_TOLERANCE * expected)
    if uneven.size:
        k = int(uneven[0])
        raise DicomSeriesError(
            f"{where} has unevenly spaced slices (slice {k + 1} to {k + 2} is {steps[k]:.2f} mm, most steps are "
            f"{expected:.2f} mm); organscope needs evenly spaced slices, so resample or re-export the series."
        )
    slice_vec = (positions[order[-1]] - positions[order[0]]) / (n - 1)
    return order, slice_vec


def _pixels(datasets: list, folder: Path) -> np.ndarray:
    """(columns, rows, slices) array in HU: int16 when the rescale is an integer shift that fits, else float32."""
    first = datasets[0]
    stack = np.empty((len(datasets), int(first.Rows), int(first.Columns)), dtype=np.int16)
    for k, ds in enumerate(datasets):
        if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise DicomSeriesError(f"The DICOM series in {folder} is not single-frame greyscale, which is not "
                                   "supported (convert it with dcm2niix).")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pix = ds.pixel_array
            if pix.shape != stack.shape[1:]:
                raise ValueError(f"{pix.shape[-2:]} pixels where Rows x Columns says {stack.shape[1:]}")
        except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError, TypeError) as e:
            syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "unknown")
            hint = ("install pylibjpeg and pylibjpeg-openjpeg" if isinstance(e, (RuntimeError, NotImplementedError))
                    else "the file is truncated or corrupt: re-export the series")
            raise DicomSeriesError(
                f"The pixel data of {Path(ds.filename).name} in {folder} cannot be decoded (transfer syntax "
                f"{syntax}: {' '.join(str(e).split())[:150]}); {hint}."
            ) from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if stack.dtype == np.int16 and slope == 1.0 and inter.is_integer():
            hu = pix.astype(np.int32) + int(inter)
            if hu.size and -32768 <= hu.min() and hu.max() <= 32767:
                stack[k] = hu
                continue
        if stack.dtype != np.float32:
            stack = stack.astype(np.float32)
        stack[k] = pix.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return stack.transpose(2, 1, 0)


def _lps_affine(first, slice_vec: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) -> LPS mm. PixelSpacing is (between rows, between columns)."""
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = slice_vec
    affine[:3, 3] = np.asarray(first.ImagePositionPatient, dtype=float)
    return affine
