"""Tiny synthetic DICOM fixtures for the radiotherapy tests: a CT series (pydicom, from scratch), the RT
objects a planning system exports beside it (RTPLAN, multi-frame RTDOSE), and hand-made RT Structure Sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"


def _file_dataset(sop_class: str, modality: str, *, study_uid: str, series_uid: str, for_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Phantom^Tiny"
    ds.PatientID = "PH-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "S1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = for_uid
    return ds


def make_ct_series(folder: Path, hu: np.ndarray, *, spacing_mm=(1.5, 1.25, 2.5), origin_lps=(-20.0, -18.0, 30.0),
                   series_uid: str | None = None, study_uid: str | None = None, for_uid: str | None = None,
                   description: str = "tiny CT", prefix: str = "ct", orientation=(1, 0, 0, 0, 1, 0)) -> dict:
    """Write `hu` (columns i, rows j, slices k) as an axial CT series, one file per slice, files in reverse
    slice order. spacing_mm = (column spacing, row spacing, slice step); `orientation` is the
    ImageOrientationPatient (slices step along row cosine x column cosine). Returns the UIDs used."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    ni, nj, nk = hu.shape
    for k in range(nk):
        ds = _file_dataset(CTImageStorage, "CT", study_uid=study_uid, series_uid=series_uid, for_uid=for_uid)
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        ds.ImagePositionPatient = [f"{v:.6g}" for v in np.asarray(origin_lps, float) + k * spacing_mm[2] * normal]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
        ds.PixelSpacing = [f"{spacing_mm[1]:g}", f"{spacing_mm[0]:g}"]  # (between rows, between columns)
        ds.SliceThickness = f"{spacing_mm[2]:g}"
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"{prefix}{nk - k:03d}.dcm", enforce_file_format=True)
    return {"series_uid": series_uid, "study_uid": study_uid, "for_uid": for_uid}


def make_rtplan(path: Path, uids: dict) -> None:
    ds = _file_dataset(RT_PLAN_STORAGE, "RTPLAN", study_uid=uids["study_uid"], series_uid=generate_uid(),
                       for_uid=uids["for_uid"])
    ds.RTPlanLabel = "PLAN1"
    ds.save_as(path, enforce_file_format=True)


def make_rtdose(path: Path, uids: dict, *, shape=(10, 12, 4)) -> None:
    """A multi-frame dose grid: it has image geometry, like a CT slice, but is no scan."""
    ds = _file_dataset(RT_DOSE_STORAGE, "RTDOSE", study_uid=uids["study_uid"], series_uid=generate_uid(),
                       for_uid=uids["for_uid"])
    ds.ImagePositionPatient = [-10, -10, 30]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [3, 3]
    ds.Rows, ds.Columns = shape[1], shape[0]
    ds.NumberOfFrames = shape[2]
    ds.GridFrameOffsetVector = [3 * k for k in range(shape[2])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseGridScaling = 0.001
    ds.DoseUnits = "GY"
    ds.PixelData = np.zeros((shape[2], shape[1], shape[0]), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_rtstruct(path: Path, ct_folder_uids: dict, ct_files: list[Path],
                  rois: list[tuple[str, str, list[np.ndarray]]]) -> None:
    """A hand-made RTSTRUCT: rois = [(name, interpreted type, [contour (n, 3) LPS mm, ...])]; POINT type ROIs
    get POINT contours. References every CT slice in its frame of reference."""
    uids = ct_folder_uids
    ds = _file_dataset(RT_STRUCT_STORAGE, "RTSTRUCT", study_uid=uids["study_uid"], series_uid=generate_uid(),
                       for_uid=uids["for_uid"])
    del ds.FrameOfReferenceUID
    ds.StructureSetLabel = "hand"
    cts = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_files]
    images = Sequence()
    for c in cts:
        item = Dataset()
        item.ReferencedSOPClassUID = c.SOPClassUID
        item.ReferencedSOPInstanceUID = c.SOPInstanceUID
        images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = uids["series_uid"]
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = uids["study_uid"]
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = uids["for_uid"]
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    for number, (name, kind, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = uids["for_uid"]
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        rc.ContourSequence = Sequence()
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "POINT" if kind == "MARKER" else "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in np.asarray(pts, float).ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = kind
        obs.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(obs)
    ds.save_as(path, enforce_file_format=True)


def phantom_ct(shape=(32, 32, 8)) -> np.ndarray:
    """Soft tissue (40 HU) in an air box with a bone rod: plausible enough for the CT checks."""
    hu = np.full(shape, -1000, np.int16)
    hu[3:-3, 3:-3, :] = 40
    hu[14:18, 20:24, :] = 700
    return hu


def phantom_labels(shape=(32, 32, 8)) -> np.ndarray:
    """Label 1: a ring (a square with a square hole) on slices 1-5; label 2: two islands on slices 2-6 and,
    on slice 4, an island inside label 1's hole."""
    lab = np.zeros(shape, np.uint8)
    lab[5:17, 5:15, 1:6] = 1
    lab[8:14, 8:12, 1:6] = 0  # the hole
    lab[20:27, 4:9, 2:7] = 2  # island one
    lab[19:25, 15:24, 2:7] = 2  # island two (8-separated from island one)
    lab[10:12, 9:11, 4] = 2  # an island inside the hole
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = (ii - 23.3) ** 2 + (jj - 28.0) ** 2 <= 2.6 ** 2
    lab[..., 3][disc & (lab[..., 3] == 0)] = 2  # a round third island on slice 3
    return lab
