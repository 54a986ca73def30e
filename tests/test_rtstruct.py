"""RT Structure Sets: every rule of the writer, the reader (even-odd holes, keyholes, islands, z noise,
markers), TG-263 names and synonyms, `convert` both ways, `segment --rtstruct` and a label map ->
RTSTRUCT -> label map round trip. All on tiny synthetic DICOM built here; the real clinical case in
../shared is used only by the test at the end, which skips without it."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

import organscope
from organscope.cli import main
from organscope.segmentation import Segmentation
from organscope.errors import InputError
from organscope.io import load_labels, load_volume
from organscope.io.rtstruct import fill_even_odd, read_rtstruct, roi_mask, rtstruct_labels
from organscope.organs import ORGANS, organ_from_roi_name, tg263_name
from organscope.outputs.rtstruct import format_ds, slice_contours, write_rtstruct

from helpers.dicom_rt import make_ct_series, make_rtdose, make_rtplan, make_rtstruct, phantom_ct, phantom_labels

SPACING = (1.5, 1.25, 2.5)
ORIGIN = (-20.0, -18.0, 30.0)
NAMES = {1: "brainstem", 2: "parotid_left", 3: "mandible"}
LUNG1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsclc-rtstruct" / "LUNG1-001"


def labels3() -> np.ndarray:
    lab = phantom_labels()
    lab[2:5, 25:30, 6:8] = 3
    return lab


@pytest.fixture
def case(tmp_path):
    """A clinic export folder (CT + RTPLAN + RTDOSE), its CT Volume and the phantom label map on it."""
    folder = tmp_path / "export"
    uids = make_ct_series(folder, phantom_ct(), spacing_mm=SPACING, origin_lps=ORIGIN)
    make_rtplan(folder / "RP.dcm", uids)
    make_rtdose(folder / "RD.dcm", uids)
    ct = load_volume(folder)
    return folder, uids, ct, labels3()


def dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def ds_strings(item, keyword: str) -> list[str]:
    """The DS values of an element exactly as stored in the file."""
    raw = item.get_item(keyword)
    value = raw.value
    if isinstance(value, bytes):
        return value.decode().strip().split("\\")
    return [getattr(v, "original_string", str(v)) for v in value]


# --- names ---------------------------------------------------------------------------------------

def test_tg263_names_of_the_head_and_neck_organs():
    expected = {"brainstem": "Brainstem", "spinal_cord": "SpinalCord", "parotid_left": "Parotid_L",
                "parotid_right": "Parotid_R", "esophagus": "Esophagus", "larynx": "Larynx",
                "mandible": "Bone_Mandible"}
    assert {n: tg263_name(n) for n in expected} == expected
    assert all(organ_from_roi_name(tg263_name(n)) == n for n in ORGANS)  # every organ comes back
    assert all(len(tg263_name(n)) <= 16 for n in expected)


@pytest.mark.parametrize("roi, name", [
    ("Spinal cord", "spinal_cord"), ("SpinalCord", "spinal_cord"), ("Spinal-Cord", "spinal_cord"),
    ("SPINAL_CORD", "spinal_cord"), ("Cord", "spinal_cord"), ("Lung L", "lung_left"), ("Lung_L", "lung_left"),
    ("Lung-Left", "lung_left"), ("Left Lung", "lung_left"), ("lung_r", "lung_right"), ("LungRight", "lung_right"),
    ("Oesophagus", "esophagus"), ("Esophagus", "esophagus"), ("Parotid_R", "parotid_right"),
    ("L Parotid", "parotid_left"), ("Bone_Mandible", "mandible"), ("Brain Stem", "brainstem"), ("Heart", "heart"),
    ("Kidney Rt", "kidney_right"), ("Glnd_Thyroid", "thyroid_gland"), ("BODY", "body"), ("External", "body"),
    ("Patient", "body"), ("GTV-1", "gtv_1"), ("PTV 60 Gy", "ptv_60_gy"), ("Z_Ring (opt)", "z_ring"),
])
def test_roi_name_synonyms(roi, name):
    assert organ_from_roi_name(roi) == name


# --- writer rules --------------------------------------------------------------------------------

def test_every_rtstruct_rule(case, tmp_path):
    folder, uids, ct, lab = case
    path = tmp_path / "out.rtstruct.dcm"
    assert write_rtstruct(Segmentation(ct.with_array(lab), NAMES, {}), ct, path, engine="cnn3d",
                          model="cnn3d_openkbp") == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp file left
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    # header: software and model named, patient and study copied from the CT
    assert ds.Manufacturer == "organscope" and organscope.__version__ in ds.SoftwareVersions
    assert "cnn3d" in ds.ManufacturerModelName and "cnn3d_openkbp" in ds.ManufacturerModelName
    assert "organscope" in ds.SeriesDescription
    assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == ("PH-001", "Phantom^Tiny", uids["study_uid"])
    # ROIs: TG-263 names, catalogue colours, ORGAN, the CT's frame of reference
    rois = {int(r.ROINumber): r for r in ds.StructureSetROISequence}
    assert {r.ROIName for r in rois.values()} == {"Brainstem", "Parotid_L", "Bone_Mandible"}
    colour = {int(c.ReferencedROINumber): [int(v) for v in c.ROIDisplayColor] for c in ds.ROIContourSequence}
    for number, roi in rois.items():
        organ = organ_from_roi_name(roi.ROIName)
        assert colour[number] == list(ORGANS[organ].rgb)
        assert roi.ReferencedFrameOfReferenceUID == uids["for_uid"]
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == uids["for_uid"]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == uids["series_uid"] and len(series.ContourImageSequence) == 8
    # contours: each refers to the CT slice at its z; >= 3 points; every DS value <= 16 characters
    slice_at = {}
    for f in folder.glob("ct*.dcm"):
        s = pydicom.dcmread(f, stop_before_pixels=True)
        slice_at[round(float(s.ImagePositionPatient[2]), 3)] = (s.SOPClassUID, s.SOPInstanceUID)
    per_slice: dict[tuple[str, float], int] = {}
    for rc in ds.ROIContourSequence:
        name = rois[int(rc.ReferencedROINumber)].ROIName
        for c in rc.ContourSequence:
            strings = ds_strings(c, "ContourData")
            assert all(len(s) <= 16 for s in strings), max(strings, key=len)
            pts = np.array([float(s) for s in strings]).reshape(-1, 3)
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            assert int(c.NumberOfContourPoints) == len(pts) >= 3
            assert np.ptp(pts[:, 2]) == 0
            z = round(float(pts[0, 2]), 3)
            ref = c.ContourImageSequence[0]
            assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == slice_at[z]
            per_slice[name, z] = per_slice.get((name, z), 0) + 1
    z = lambda k: round(ORIGIN[2] + k * SPACING[2], 3)  # noqa: E731
    assert per_slice["Brainstem", z(4)] == 2  # outer contour + the hole
    assert per_slice["Parotid_L", z(4)] == 3  # two islands + the island inside brainstem's hole
    assert per_slice["Parotid_L", z(3)] == 3  # two islands + a round one
    assert per_slice["Bone_Mandible", z(6)] == 1
    # and back: the same label map, voxel for voxel
    back = rtstruct_labels(path, ct)
    assert set(back.names.values()) == set(NAMES.values())
    value = {n: v for v, n in back.names.items()}
    for v, n in NAMES.items():
        assert dice(back.labels.array == value[n], lab == v) == 1.0


@pytest.mark.parametrize("orientation", [(-1, 0, 0, 0, -1, 0), (0, 1, 0, -1, 0, 0),
                                         (1, 0, 0, 0, 0.8660254, -0.5)])
def test_round_trip_on_rotated_and_tilted_series(tmp_path, orientation):
    """Writer and reader go through the CT's affine: a series stored upside down, turned 90 degrees in plane,
    or tilted 30 degrees (the contours then lie in the tilted slice planes) round-trips exactly."""
    folder = tmp_path / "ct"
    make_ct_series(folder, phantom_ct(), spacing_mm=SPACING, origin_lps=ORIGIN, orientation=orientation)
    ct = load_volume(folder)
    lab = labels3()
    write_rtstruct(Segmentation(ct.with_array(lab), NAMES, {}), ct, tmp_path / "rs.dcm")
    back = rtstruct_labels(tmp_path / "rs.dcm", ct)
    value = {n: v for v, n in back.names.items()}
    for v, n in NAMES.items():
        assert np.array_equal(back.labels.array == value[n], lab == v), n


def test_batch_gives_rtstruct_to_dicom_scans_only(tmp_path):
    from organscope.batch import plan

    make_ct_series(tmp_path / "scans" / "dicom_case", phantom_ct())
    (tmp_path / "scans" / "nifti_case.nii.gz").write_bytes(b"")
    scans = sorted((tmp_path / "scans").iterdir())
    jobs, done, no_dicom = plan(scans, tmp_path / "out", {"rtstruct", "statistics"})
    targets = {Path(j.scan).name: j.targets for j in jobs}
    assert targets["dicom_case"].rtstruct == tmp_path / "out" / "dicom_case.rtstruct.dcm"
    assert targets["nifti_case.nii.gz"].rtstruct is None and targets["nifti_case.nii.gz"].statistics is not None
    assert [p.name for p in no_dicom] == ["nifti_case.nii.gz"]


def test_format_ds_never_exceeds_16_characters():
    for v in (0.0, -0.0, 1e-9, -1e-9, 0.1 + 0.2, -249.51171875, -123456.123456, 98765432.1, -1234567890123.75,
              3.4e20, -7.7e-5, 12345678901234.0):
        text = format_ds(v)
        assert len(text) <= 16, (v, text)
        assert abs(float(text) - v) <= max(1e-4, abs(v) * 1e-6), (v, text)
    assert format_ds(-0.00001) == "0" and format_ds(2.5) == "2.5" and format_ds(-249.51171875) == "-249.5117"
    with pytest.raises(InputError):
        format_ds(float("nan"))


def test_contours_of_degenerate_masks():
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    (c,) = slice_contours(one)
    assert len(c) == 4  # a diamond through the four edge midpoints, never fewer than 3 points
    assert fill_even_odd([c], one.shape).tolist() == one.tolist()
    assert slice_contours(np.zeros((4, 4), bool)) == []
    diag = np.eye(6, dtype=bool)  # pixels touching only at corners: separate contours, each >= 3 points
    cs = slice_contours(diag)
    assert len(cs) == 6 and all(len(c) >= 3 for c in cs)
    assert fill_even_odd(cs, diag.shape).tolist() == diag.tolist()


def test_no_organ_and_non_dicom_input_are_clear_errors(case, tmp_path):
    _, _, ct, lab = case
    with pytest.raises(InputError, match="No organ"):
        write_rtstruct(Segmentation(ct.with_array(np.zeros_like(lab)), NAMES, {}), ct, tmp_path / "x.dcm")
    from organscope.volume import Volume

    nifti_ct = Volume(ct.array, ct.affine, {"format": "nifti", "source": "ct.nii.gz"})
    with pytest.raises(InputError, match="--rtstruct"):
        write_rtstruct(Segmentation(ct.with_array(lab), NAMES, {}), nifti_ct, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


# --- reader --------------------------------------------------------------------------------------

def rect(i0, i1, j0, j1, z, *, reverse=False) -> np.ndarray:
    """A rectangle around the pixel centres i0..i1-1, j0..j1-1 (borders not at half voxels), LPS mm."""
    a, b = i0 - 0.3, i1 - 0.7
    c, d = j0 - 0.4, j1 - 0.6
    vox = [(a, c), (b, c), (b, d), (a, d)]
    if reverse:
        vox = vox[::-1]
    return np.array([(ORIGIN[0] + i * SPACING[0], ORIGIN[1] + j * SPACING[1], z) for i, j in vox])


def test_reader_even_odd_holes_keyholes_islands_markers_and_z_noise(case, tmp_path):
    folder, uids, ct, _ = case
    zk = lambda k: ORIGIN[2] + k * SPACING[2]  # noqa: E731
    # Lung L: outer + hole (even-odd), on slice 2 written 1e-4 mm off, on slice 3 0.4 slice off; a plane
    # drawn between slices 2 and 3 (0.45 slice above 2) must not be filled together with slice 2's plane
    lung = [rect(2, 20, 2, 20, zk(2) + 1e-4), rect(6, 12, 6, 12, zk(2) - 1e-4, reverse=True),
            rect(2, 20, 2, 20, zk(3) + 0.4 * SPACING[2]), rect(8, 10, 8, 10, zk(3) + 0.4 * SPACING[2]),
            rect(2, 20, 2, 20, zk(2) + 0.45 * SPACING[2])]
    # Esophagus: one keyhole contour (outer boundary, a zero-width cut, the hole boundary the other way)
    a0, a1, h0, h1 = -0.5 + 22, 30 - 0.5, 24 - 0.5, 27 - 0.5
    key_vox = [(a0, a0), (a1, a0), (a1, a1), (a0, a1), (a0, h0), (h0, h0), (h0, h1), (h1, h1), (h1, h0), (a0, h0)]
    keyhole = np.array([(ORIGIN[0] + i * SPACING[0], ORIGIN[1] + j * SPACING[1], zk(5)) for i, j in key_vox])
    # Spinal cord: two islands on one slice, and one contour beyond the last slice (dropped)
    cord = [rect(24, 27, 2, 5, zk(1)), rect(28, 31, 2, 5, zk(1)), rect(24, 27, 2, 5, zk(12))]
    marker = [np.array([[0.0, 0.0, zk(4)]])]
    make_rtstruct(folder / "RS.dcm", uids, sorted(folder.glob("ct*.dcm")),
                  [("Lung L", "ORGAN", lung), ("Oesophagus", "ORGAN", keyhole[None]), ("Spinal-Cord", "ORGAN", cord),
                   ("Iso", "MARKER", marker)])
    ss = read_rtstruct(folder / "RS.dcm")
    assert [r.name for r in ss.rois] == ["lung_left", "esophagus", "spinal_cord"]
    assert ss.skipped == ("Iso (marker)",)
    assert ss.referenced_series_uids == (uids["series_uid"],)
    expect = np.zeros(ct.shape, bool)
    expect[2:20, 2:20, 2] = True
    expect[6:12, 6:12, 2] = False
    expect[2:20, 2:20, 3] = True
    expect[8:10, 8:10, 3] = False
    assert np.array_equal(roi_mask(ss.rois[0], ct), expect)
    expect = np.zeros(ct.shape, bool)
    expect[22:30, 22:30, 5] = True
    expect[24:27, 24:27, 5] = False
    assert np.array_equal(roi_mask(ss.rois[1], ct), expect)
    expect = np.zeros(ct.shape, bool)
    expect[24:27, 2:5, 1] = expect[28:31, 2:5, 1] = True
    with pytest.warns(UserWarning, match="outside the CT's slices"):
        assert np.array_equal(roi_mask(ss.rois[2], ct), expect)
    # --rois picks by any spelling; an unknown ROI is one sentence naming what the file holds
    seg = rtstruct_labels(folder / "RS.dcm", ct, rois=["Esophagus", "lung_l"])
    assert sorted(seg.names.values()) == ["esophagus", "lung_left"]
    with pytest.raises(InputError, match="has no ROI 'Heart'.*Lung L"):
        rtstruct_labels(folder / "RS.dcm", ct, rois=["Heart"])


def test_fill_even_odd_matches_an_independent_point_in_polygon_test(rng):
    from matplotlib.path import Path as MplPath

    shape = (40, 30)
    polys = []
    for _ in range(3):
        centre = rng.uniform(5, 25, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(3, 10, 9)
        polys.append(centre + np.column_stack([radii * np.cos(angles), radii * np.sin(angles)]))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    odd = np.zeros(centres.shape[0], bool)
    for p in polys:
        odd ^= MplPath(p).contains_points(centres)
    assert np.array_equal(fill_even_odd(polys, shape), odd.reshape(shape))


# --- commands ------------------------------------------------------------------------------------

def test_convert_both_ways_and_round_trip_dice(case, tmp_path, capsys):
    folder, uids, ct, lab = case
    from organscope.io import save_labels

    save_labels(ct, lab, tmp_path / "phantom.nii.gz", NAMES)
    rs = folder / "RS.organscope.dcm"
    assert main(["convert", str(tmp_path / "phantom.nii.gz"), "-o", str(rs), "--ct", str(folder)]) == 0
    assert {r.ROIName for r in pydicom.dcmread(rs).StructureSetROISequence} == {"Brainstem", "Parotid_L",
                                                                                 "Bone_Mandible"}
    # RTSTRUCT -> label map, the CT found in the RTSTRUCT's own folder (a clinic export)
    out = tmp_path / "back.nii.gz"
    capsys.readouterr()
    assert main(["convert", str(rs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "brainstem" in printed and " ml " in printed
    back = load_labels(out)
    names = json.loads((tmp_path / "back.json").read_text())["labels"]
    assert set(names) == {"background", *NAMES.values()}
    assert np.allclose(back.affine, ct.affine)
    for v, n in NAMES.items():
        assert dice(back.array == names[n], lab == v) >= 0.98
    # --rois, and a DICOM-SEG goes the same way
    assert main(["convert", str(rs), "-o", str(tmp_path / "one.nii.gz"), "--rois", "Parotid_L"]) == 0
    assert set(json.loads((tmp_path / "one.json").read_text())["labels"]) == {"background", "parotid_left"}
    from organscope.outputs import write_dicom_seg

    write_dicom_seg(Segmentation(ct.with_array(lab), NAMES, {}), ct, tmp_path / "x.seg.dcm")
    assert main(["convert", str(tmp_path / "x.seg.dcm"), "-o", str(tmp_path / "seg.nii.gz"), "--ct",
                 str(folder)]) == 0
    seg_back = load_labels(tmp_path / "seg.nii.gz")
    seg_names = json.loads((tmp_path / "seg.json").read_text())["labels"]
    assert all(np.array_equal(seg_back.array == seg_names[n], lab == v) for v, n in NAMES.items())


def test_convert_errors_are_one_line(case, tmp_path, capsys):
    folder, _, ct, lab = case
    from organscope.io import save_labels

    save_labels(ct, lab, tmp_path / "p.nii.gz", NAMES)
    cases = [
        (["convert", str(tmp_path / "p.nii.gz"), "-o", str(tmp_path / "o.dcm")], "--ct"),
        (["convert", str(tmp_path / "p.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--ct", str(folder)], ".dcm"),
        (["convert", str(folder / "RD.dcm"), "-o", str(tmp_path / "o.nii.gz")], "RTDOSE"),
        (["convert", str(tmp_path / "nothing.dcm"), "-o", str(tmp_path / "o.nii.gz")], "does not exist"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_segment_rtstruct_on_a_clinic_folder(case, tmp_path, capsys, monkeypatch):
    folder, uids, ct, lab = case
    make_rtstruct(folder / "RS.clinic.dcm", uids, sorted(folder.glob("ct*.dcm")),
                  [("Lung L", "ORGAN", [rect(2, 20, 2, 20, ORIGIN[2] + 2 * SPACING[2])])])
    from organscope import pipeline

    monkeypatch.setattr(pipeline, "segment_volume",
                        lambda ct, options, **kw: Segmentation(ct.with_array(lab), NAMES, {"total": 0.01}))
    out = tmp_path / "res.nii.gz"
    assert main(["segment", "-i", str(folder), "-o", str(out), "--rtstruct", "--no-progress"]) == 0, \
        capsys.readouterr().err
    ds = pydicom.dcmread(tmp_path / "res.rtstruct.dcm")
    assert {r.ROIName for r in ds.StructureSetROISequence} == {"Brainstem", "Parotid_L", "Bone_Mandible"}
    from organscope.engines.registry import DEFAULT_ENGINE

    assert ds.ManufacturerModelName == f"organscope {DEFAULT_ENGINE}"
    # a NIfTI input gets one clear line and no output
    from organscope.io import save_volume

    save_volume(ct, tmp_path / "ct.nii.gz")
    capsys.readouterr()
    assert main(["segment", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "n.nii.gz"),
                 "--rtstruct", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rtstruct" in err[0] and not (tmp_path / "n.nii.gz").exists()


def test_evaluate_against_an_rtstruct_reference(case, tmp_path, capsys):
    folder, uids, ct, lab = case
    from organscope.io import save_labels

    save_labels(ct, lab, tmp_path / "ref.nii.gz", NAMES)
    rs = folder / "RS.ref.dcm"
    assert main(["convert", str(tmp_path / "ref.nii.gz"), "-o", str(rs), "--ct", str(folder)]) == 0
    pred = lab.copy()
    pred[pred == 3] = 0  # mandible missed
    preds = tmp_path / "preds"
    preds.mkdir()
    save_labels(ct, pred, preds / "case1.nii.gz", NAMES)
    capsys.readouterr()
    assert main(["evaluate", str(preds / "case1.nii.gz"), str(rs), "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev.json").read_text())
    scores = doc["cases"]["case1"]
    assert scores["brainstem"]["dice"] == 1.0 and scores["parotid_left"]["dice"] == 1.0
    assert scores["mandible"]["dice"] == 0.0
    # the same with the CT given explicitly and a folder of predictions
    shutil.copytree(folder, tmp_path / "ct_only", ignore=shutil.ignore_patterns("RS*", "RD*", "RP*"))
    assert main(["evaluate", str(preds), str(rs), "--reference-series", str(tmp_path / "ct_only"),
                 "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2.json").read_text())["cases"]["case1"]["brainstem"]["dice"] == 1.0


# --- the real clinical structure set (skipped without ../shared) ----------------------------------

@pytest.mark.skipif(not LUNG1.is_dir(), reason="shared NSCLC-Radiomics case absent")
def test_lung1_rtstruct_round_trip(tmp_path):
    ct = load_volume(LUNG1 / "image")
    seg = rtstruct_labels(LUNG1 / "mask_rtstruct" / "1-1.dcm", ct)
    assert sorted(seg.names.values()) == ["gtv_1", "lung_left", "lung_right", "spinal_cord"]
    t0 = time.perf_counter()
    write_rtstruct(seg, ct, tmp_path / "rs.dcm", engine="convert")
    assert time.perf_counter() - t0 < 30
    back = rtstruct_labels(tmp_path / "rs.dcm", ct)
    value = {n: v for v, n in back.names.items()}
    for v, n in seg.names.items():
        assert dice(back.labels.array == value[n], seg.labels.array == v) >= 0.98, n
