"""DICOM-SEG out (highdicom) for a segmentation of a DICOM series, and back in onto the series' grid.

One segment per organ present, labelled with its catalogue name and coded terms (`codes.py`), one
frame per source slice that holds it (BINARY segmentation, empty frames omitted). Each source slice's
frame is taken from the label map by geometry, not by file order: the pixel (row, column) of a slice
at ImagePositionPatient p is at LPS p + column * dc * rowcos + row * dr * colcos, which is mapped to
the label map's voxel through its (RAS -> LPS) affine, so any orientation of the grid is handled.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..segmentation import Segmentation
from ..errors import GeometryError, InputError
from ..volume import Volume
from ._common import check_same_grid, organ_display, present_named_labels

#: Largest distance (in voxels) of a source pixel from a voxel centre of the label map's grid.
GRID_TOLERANCE_VOX = 0.01


def require_dicom_source(ct: Volume, what: str = "A DICOM-SEG") -> None:
    """InputError unless `ct` was read from a DICOM series (and records its source files)."""
    if ct.meta.get("format") != "dicom":
        src = ct.meta.get("source", "the input")
        fmt = {"nifti": "a NIfTI file", "nrrd": "an NRRD file", "metaimage": "a MetaImage file"}.get(
            ct.meta.get("format"), "not a DICOM series")
        flag = "--rtstruct" if "RTSTRUCT" in what else "--dicom-seg"
        raise InputError(f"{what} needs a DICOM series as input, but {src} is {fmt}; give the DICOM series "
                         f"folder with -i, or leave out {flag}.")
    if not ct.meta.get("source_files"):
        raise InputError(f"{what} needs the source slices of the DICOM series, but the volume does not "
                         "record them; read the series with organscope.load_volume.")


def _read_sources(ct: Volume) -> list:
    """The source slices' headers in array order, with UIDs an anonymiser blanked filled in: SOP class and
    instance from the file meta header, study and series UIDs made up deterministically from the slices."""
    import pydicom
    from pydicom.uid import generate_uid

    from ..io.dicom import sop_instance_uid

    uids = list(ct.meta.get("sop_instance_uids", []))
    if not all(uids):
        raise InputError(f"The DICOM series in {ct.meta.get('source')} has slices without a SOPInstanceUID, so "
                         "a DICOM-SEG cannot refer to them.")
    out = []
    for f, uid in zip(ct.meta["source_files"], uids):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (OSError, ValueError, EOFError, TypeError, pydicom.errors.InvalidDicomError):
            raise InputError(f"The DICOM-SEG needs the source slice {f}, which can no longer be read.") from None
        if sop_instance_uid(ds) != uid:
            raise InputError(f"The source slice {f} changed since the series was read (another "
                             "SOPInstanceUID); read the series again.")
        ds.SOPInstanceUID = uid
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "") or pydicom.uid.CTImageStorage
        for key in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(key, "") or ""):
                setattr(ds, key, generate_uid(entropy_srcs=[key, *uids]))
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
            del ds.SpecificCharacterSet  # empty = the default repertoire; highdicom refuses the empty value
        out.append(ds)
    return out


def frame_index(ds, grid: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices (i, j, k), each of shape (Rows, Columns), of every pixel of source slice `ds`."""
    from ..io._common import ras_to_lps

    inv = np.linalg.inv(ras_to_lps(grid.affine))
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    origin = inv[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=float) + inv[:3, 3]
    per_col = inv[:3, :3] @ (iop[:3] * col_spacing)
    per_row = inv[:3, :3] @ (iop[3:] * row_spacing)
    name = Path(str(getattr(ds, "filename", "") or "a slice")).name
    for vec in (origin, per_col, per_row):
        if np.abs(vec - np.round(vec)).max() > GRID_TOLERANCE_VOX:
            raise GeometryError(f"The source slice {name} does not lie on the label map's voxel grid; the "
                                "label map must be on the DICOM series' own grid.")
    origin, per_col, per_row = (np.round(v).astype(np.int64) for v in (origin, per_col, per_row))
    rows = np.arange(int(ds.Rows))[:, None]
    cols = np.arange(int(ds.Columns))[None, :]
    index = tuple(origin[a] + rows * per_row[a] + cols * per_col[a] for a in range(3))
    for a, ix in enumerate(index):
        if ix.min() < 0 or ix.max() >= grid.shape[a]:
            raise GeometryError(f"The source slice {name} reaches outside the label map's grid; the label map "
                                "must be on the DICOM series' own grid.")
    return index


def _segment_description(number: int, name: str, engine: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__
    from .codes import organ_code

    code = organ_code(name)
    _, rgb = organ_display(name)
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"organscope {engine}", family=codes.cid7162.ArtificialIntelligence, version=__version__),
        tracking_uid=hd.UID(),
        tracking_id=name,
        display_color=hd.color.CIELabColor.from_rgb(*(c / 255.0 for c in rgb)),
    )
    if code.modifier is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(code.modifier.value, code.modifier.scheme_designator, code.modifier.meaning)]
    return desc


#: Type-2 attributes (present, maybe empty) of the patient and study that highdicom copies from the source images.
TYPE2_SOURCE_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(seg: Segmentation, ct: Volume, path: str | os.PathLike, *, engine: str = "sparse") -> int:
    """Atomically write `seg` (a label map on `ct`'s grid) as a DICOM-SEG referencing `ct`'s DICOM series.

    Returns the number of segments written. InputError if `ct` is not a DICOM series or no organ is present.
    """
    import highdicom as hd

    from .. import __version__
    from ..io import atomic_paths
    from ..io._common import wrap_write_error

    require_dicom_source(ct)
    check_same_grid(seg.labels, ct)
    labels = np.asarray(seg.labels.array)
    present = present_named_labels(seg, "DICOM-SEG")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    lut[present] = np.arange(1, len(present) + 1)
    sources = _read_sources(ct)
    frames = np.stack([lut[labels[frame_index(ds, ct)]] for ds in sources])
    descriptions = [_segment_description(n, seg.names[v], engine) for n, v in enumerate(present, start=1)]
    for ds in sources:  # anonymised series lack type-2 patient/study attributes that highdicom copies
        for tag in TYPE2_SOURCE_TAGS:
            if tag not in ds:
                setattr(ds, tag, "")
    try:
        with warnings.catch_warnings():  # highdicom's remarks on the source's patient name etc. are not ours
            warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\.")
            dcm = _build(hd, sources, frames, descriptions, engine, __version__)
    except (AttributeError, ValueError, TypeError, KeyError) as e:
        raise InputError(f"The DICOM-SEG cannot be built from the source series ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:150]}); the series lacks attributes DICOM-SEG copies.") from None
    try:
        with atomic_paths(path) as (tmp,):
            dcm.save_as(tmp)
    except OSError as e:
        raise wrap_write_error(e, path) from None
    return len(present)


def _build(hd, sources, frames, descriptions, engine, version):
    first = sources[0]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="organscope",
        manufacturer_model_name=f"organscope {engine}",
        software_versions=version,
        device_serial_number="none",
        content_description="Organ segmentation by organscope",
        content_label="ORGANS",
        series_description="organscope organs",
    )


def read_dicom_seg(path: str | os.PathLike, ct: Volume) -> Segmentation:
    """A DICOM-SEG of `ct`'s series as a label map on `ct`'s grid: value = segment number, names = labels."""
    import highdicom as hd
    import pydicom

    require_dicom_source(ct, "Reading a DICOM-SEG")
    try:
        dcm = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as e:
        raise InputError(f"Could not read {path} as a DICOM-SEG ({type(e).__name__}).") from None
    uids = list(ct.meta["sop_instance_uids"])
    referenced = {str(ref.ReferencedSOPInstanceUID) for item in dcm.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    if not referenced <= set(uids):
        raise InputError(f"{path} refers to slices that are not in the DICOM series {ct.meta.get('source')}.")
    pixels = dcm.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               relabel=False)
    numbers = list(dcm.segment_numbers)
    out = np.zeros(ct.shape, dtype=np.uint8 if max(numbers, default=0) < 256 else np.uint16)
    for ds, frame in zip(_read_sources(ct), pixels):
        out[frame_index(ds, ct)] = frame
    names = {int(n): str(dcm.get_segment_description(n).segment_label) for n in numbers}
    return Segmentation(ct.with_array(out), names, {})
