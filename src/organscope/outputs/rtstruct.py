"""DICOM RT Structure Set (RTSTRUCT) out, built with pydicom, for a segmentation of a DICOM CT series.

One ROI per organ present, named by TG-263 (`organs.tg263_name`: Brainstem, SpinalCord, Parotid_L ...)
in the catalogue's colour, RT ROI Interpreted Type ORGAN (EXTERNAL/GTV/CTV/PTV for
structures outside the catalogue that a converted label map may hold), generation algorithm AUTOMATIC, in the CT's
Frame of Reference. Contours are the 0.5 iso-line of each organ's mask on each axial slice of the CT
(marching squares, scikit-image's `find_contours`), so they run at the CT's own in-plane resolution and
sub-voxel: through the midpoints between inside and outside pixel centres, which fills back to the same
pixels. Collinear points are dropped (exactly straight runs only), and a contour of fewer than 3 points is
never written.

Holes and islands: every boundary is its own CLOSED_PLANAR contour. An island is a contour; a hole is a
contour inside its organ's outer contour (no keyhole cut). Filling all of an ROI's contours on a slice by
the even-odd rule gives the mask; this is what Eclipse, RayStation, 3D Slicer and dicompyler do, and what
`io.rtstruct` reads. Each contour refers to its CT slice (Contour Image Sequence, SOP Class and Instance
UID). Every DS value (ContourData) is written explicitly, at most 16 characters (`format_ds`).
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from ..segmentation import Segmentation
from ..errors import InputError
from ..volume import Volume
from ._common import check_same_grid, organ_display, present_named_labels

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Conventional SOP Class of the RT Referenced Study item (Detached Study Management).
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"
#: Attributes copied from the CT: patient and study modules.
PATIENT_STUDY_TAGS = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                      "PatientSex", "PatientAge", "OtherPatientIDsSequence", "PatientIdentityRemoved",
                      "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                      "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "PatientWeight",
                      "PatientSize")
DS_MAX_CHARS = 16


def format_ds(value: float) -> str:
    """A Decimal String of at most 16 characters: 4 decimals (0.1 µm) when they fit, fewer otherwise."""
    v = float(value)
    if not np.isfinite(v):
        raise InputError(f"A contour coordinate is {v}; cannot write it as DICOM.")
    for decimals in range(4, -1, -1):
        text = f"{v:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text in ("-0", ""):
            text = "0"
        if len(text) <= DS_MAX_CHARS:
            return text
    text = f"{v:.9e}"
    while len(text) > DS_MAX_CHARS:  # beyond 1e16 mm: not a coordinate, but keep the rule
        mantissa, exp = text.split("e")
        text = f"{mantissa[:-1]}e{exp}"
    return text


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Drop vertices lying on the straight line through their neighbours (closed polygon)."""
    if len(points) < 4:
        return points
    prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - prev[:, 0]) * (nxt[:, 1] - points[:, 1]) - \
            (points[:, 1] - prev[:, 1]) * (nxt[:, 0] - points[:, 0])
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours ((n, 2) arrays of voxel coordinates (i, j), n >= 3, not repeating the first point) of
    a 2D mask's 0.5 iso-line (a probability map works too); outer boundaries and holes alike."""
    try:
        from skimage.measure import find_contours
    except ImportError:
        raise InputError("Writing an RTSTRUCT needs scikit-image (marching squares); install it with "
                         "pip install 'organscope[clinical]'.") from None

    m = np.asarray(mask2d, dtype=np.float32)
    if not m.any():
        return []
    nz = np.nonzero(m > 0)
    i0, i1 = nz[0].min(), nz[0].max() + 1
    j0, j1 = nz[1].min(), nz[1].max() + 1
    crop = np.pad(m[i0:i1, j0:j1], 1)  # zero border: every contour closes
    out = []
    for c in find_contours(crop, 0.5):
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        c = _drop_collinear(c + np.array([i0 - 1, j0 - 1], dtype=float))
        if len(c) >= 3 and len(np.unique(np.round(c, 6), axis=0)) >= 3:
            out.append(c)
    return out


def _item(**attrs):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def build_rtstruct(seg: Segmentation, ct: Volume, *, engine: str = "sparse", model: str | None = None,
                   description: str | None = None):
    """The RTSTRUCT pydicom Dataset (with file meta) of `seg`, a label map on `ct`'s grid (a DICOM series)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from .. import __version__
    from ..io._common import ras_to_lps
    from ..organs import rt_interpreted_type, tg263_name
    from .dicom_seg import _read_sources, require_dicom_source

    require_dicom_source(ct, "An RTSTRUCT")
    check_same_grid(seg.labels, ct)
    labels = np.asarray(seg.labels.array)
    present = present_named_labels(seg, "an RTSTRUCT")
    sources = _read_sources(ct)
    first = sources[0]
    for_uid = str(first.get("FrameOfReferenceUID", "") or "")
    if not for_uid:
        raise InputError(f"The DICOM series in {ct.meta.get('source')} has no FrameOfReferenceUID, which an "
                         "RTSTRUCT must refer to.")
    affine_lps = ras_to_lps(ct.affine)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta = meta
    for tag in PATIENT_STUDY_TAGS:
        if tag in first:
            ds[tag] = first[tag]
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # type 2: present, maybe empty
        if tag not in ds:
            setattr(ds, tag, "")
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 2000
    ds.SeriesDate, ds.SeriesTime = date, time
    model_name = Path(str(model)).name if model else ""  # a model given as a path: its file name
    model_text = f"organscope {engine}" + (f" {model_name}" if model_name else "")
    ds.SeriesDescription = (description or f"{model_text} organs")[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "organscope"
    ds.ManufacturerModelName = model_text[:64]
    ds.SoftwareVersions = f"organscope {__version__}"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "organscope"
    ds.StructureSetName = "organs"
    ds.StructureSetDescription = f"Organs segmented automatically by {model_text} (organscope {__version__})"[:1024]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"

    sop_class = {str(s.SOPInstanceUID): str(s.SOPClassUID) for s in sources}
    uids = list(ct.meta["sop_instance_uids"])  # slice k of the array <- uids[k]

    def image_ref(uid: str):
        return _item(ReferencedSOPClassUID=sop_class[uid], ReferencedSOPInstanceUID=uid)

    series_item = _item(SeriesInstanceUID=str(first.SeriesInstanceUID),
                        ContourImageSequence=Sequence([image_ref(u) for u in uids]))
    study_item = _item(ReferencedSOPClassUID=STUDY_COMPONENT_CLASS,
                       ReferencedSOPInstanceUID=str(first.StudyInstanceUID),
                       RTReferencedSeriesSequence=Sequence([series_item]))
    ds.ReferencedFrameOfReferenceSequence = Sequence([
        _item(FrameOfReferenceUID=for_uid, RTReferencedStudySequence=Sequence([study_item]))])

    rois, contours_seq, observations = Sequence(), Sequence(), Sequence()
    for number, value in enumerate(present, start=1):
        name = seg.names[value]
        _, rgb = organ_display(name)
        rois.append(_item(ROINumber=number, ReferencedFrameOfReferenceUID=for_uid, ROIName=tg263_name(name)[:64],
                          ROIDescription=name[:64], ROIGenerationAlgorithm="AUTOMATIC",
                          ROIGenerationDescription=f"{model_text} (organscope {__version__})"[:64]))
        items = Sequence()
        mask = labels == value
        for k in np.flatnonzero(mask.any(axis=(0, 1))):
            for poly in slice_contours(mask[:, :, k]):
                vox = np.column_stack([poly, np.full(len(poly), float(k)), np.ones(len(poly))])
                lps = (vox @ affine_lps.T)[:, :3]
                items.append(_item(ContourImageSequence=Sequence([image_ref(uids[k])]),
                                   ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(lps),
                                   ContourNumber=len(items) + 1,
                                   ContourData=[format_ds(v) for v in lps.ravel()]))
        contours_seq.append(_item(ReferencedROINumber=number, ROIDisplayColor=[int(c) for c in rgb],
                                  ContourSequence=items))
        observations.append(_item(ObservationNumber=number, ReferencedROINumber=number,
                                  ROIObservationLabel=tg263_name(name)[:16], RTROIInterpretedType=rt_interpreted_type(name),
                                  ROIInterpreter=""))
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours_seq
    ds.RTROIObservationsSequence = observations
    return ds


def _save(ds, path) -> None:
    """Save as a DICOM file (preamble, file meta), with pydicom 3 or 2.4."""
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def write_rtstruct(seg: Segmentation, ct: Volume, path: str | os.PathLike, *, engine: str = "sparse",
                   model: str | None = None, description: str | None = None) -> int:
    """Atomically write `seg` (on `ct`'s grid; `ct` read from a DICOM series) as an RTSTRUCT. Returns the
    number of ROIs written."""
    from ..io import atomic_paths
    from ..io._common import wrap_write_error

    ds = build_rtstruct(seg, ct, engine=engine, model=model, description=description)
    try:
        with atomic_paths(path) as (tmp,):
            _save(ds, tmp)
    except OSError as e:
        raise wrap_write_error(e, path) from None
    return len(ds.StructureSetROISequence)
