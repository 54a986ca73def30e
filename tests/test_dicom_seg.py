"""DICOM-SEG out and back: label maps on a DICOM series' grid -> DICOM-SEG -> label maps, compared with the
NIfTI result; plus checks that do not use organscope's own frame mapping (highdicom's per-instance reader
and highdicom's volume geometry), so that a mapping error cannot cancel out in the round trip."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import organscope
from organscope import api
from organscope.cli import main
from organscope.segmentation import Segmentation
from organscope.errors import InputError
from organscope.io import load_labels, load_volume
from organscope.outputs import read_dicom_seg, write_dicom_seg
from organscope.outputs.codes import SNOMED_TABLE, organ_code

DATA = Path(__file__).parent / "data" / "dcmqi-3slice"
SERIES = DATA / "ct-3slice"
EXAMPLE = Path(organscope.__file__).parent / "data" / "okbp_validation_222.nii.gz"
SUBJECT_B = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-example"


def by_name(seg: Segmentation) -> dict[str, np.ndarray]:
    """organ name -> boolean mask, for comparing label maps whose numbering differs."""
    arr = np.asarray(seg.labels.array)
    return {seg.names[int(v)]: arr == v for v in np.unique(arr) if v > 0}


def assert_same_organs(a: Segmentation, b: Segmentation):
    ma, mb = by_name(a), by_name(b)
    assert sorted(ma) == sorted(mb)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


def hd_volume_on_grid(hv, grid) -> np.ndarray:
    """highdicom's own volume of a SEG (its affine: (slice, row, column) -> LPS) sampled at `grid`'s voxel
    centres (RAS affine), nearest voxel; zero outside. Uses only the two affines."""
    lps_from_vox = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine
    m = np.linalg.inv(hv.affine) @ lps_from_vox  # grid voxel -> highdicom voxel
    assert np.abs(m[:3] - np.round(m[:3])).max() < 1e-3, "the SEG is not on the source grid"
    m = np.round(m).astype(np.int64)
    out = np.zeros(grid.shape, dtype=hv.array.dtype)
    ii, jj = np.meshgrid(np.arange(grid.shape[0]), np.arange(grid.shape[1]), indexing="ij")
    for k in range(grid.shape[2]):
        idx = [m[a, 0] * ii + m[a, 1] * jj + m[a, 2] * k + m[a, 3] for a in range(3)]
        inside = np.ones(ii.shape, bool)
        for a in range(3):
            inside &= (idx[a] >= 0) & (idx[a] < hv.array.shape[a])
        out[:, :, k][inside] = hv.array[tuple(ix[inside] for ix in idx)]
    return out


def known_3slice_labels():
    ct = load_volume(SERIES)
    liver_spine = load_labels(DATA / "liver_spine_seg.nrrd").array
    heart = load_labels(DATA / "heart_seg.nrrd").array
    lab = np.where(heart > 0, 3, liver_spine).astype(np.uint8)
    return ct, Segmentation(ct.with_array(lab), {1: "liver", 2: "spine", 3: "heart"}, {})


def test_3slice_known_labels_round_trip(tmp_path):
    ct, seg = known_3slice_labels()
    out = tmp_path / "seg.dcm"
    assert write_dicom_seg(seg, ct, out) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # no temp file left
    api.save_segmentation(seg, tmp_path / "labels.nii.gz")
    nifti = load_labels(tmp_path / "labels.nii.gz")
    nifti_seg = Segmentation(nifti, {v: k for k, v in json.loads((tmp_path / "labels.json").read_text())[
        "labels"].items() if v}, {})
    back = read_dicom_seg(out, ct)
    assert back.labels.shape == ct.shape and np.array_equal(back.labels.affine, ct.affine)
    assert back.names == {1: "liver", 2: "spine", 3: "heart"}
    assert_same_organs(back, nifti_seg)

    dcm = hd.seg.segread(out)
    # highdicom's own reading, per source instance: 01.dcm is the top slice (k = 2) and array = pixels.T
    uid01 = pydicom.dcmread(SERIES / "01.dcm", stop_before_pixels=True).SOPInstanceUID
    frame = dcm.get_pixels_by_source_instance([uid01], combine_segments=True)[0]
    np.testing.assert_array_equal(frame, seg.labels.array[:, :, 2].T)
    # highdicom's own geometry, through the affines only
    np.testing.assert_array_equal(hd_volume_on_grid(dcm.get_volume(combine_segments=True), ct), seg.labels.array)

    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["series_uid"]
    assert ds.FrameOfReferenceUID == pydicom.dcmread(SERIES / "01.dcm", stop_before_pixels=True).FrameOfReferenceUID
    codes = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence}
    assert codes == {"liver": "10200004", "spine": "91723000", "heart": "80891009"}  # spine: generic fallback
    assert all(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000" for s in ds.SegmentSequence)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_cli_dicom_seg_equals_the_nifti_result(capsys, tmp_path):
    """organscope segment on the DICOM series with the shipped model: the SEG read back is the NIfTI result. The
    series is 3 slices of a chest, where the head-and-neck model's organs fail the anatomy check: they are kept
    (--keep-unverified) because this test is about the DICOM-SEG, not the check."""
    out = tmp_path / "labels.nii.gz"
    rc = main(["segment", "-i", str(SERIES), "-o", str(out), "--dicom-seg", "--no-progress", "--keep-unverified"])
    err = capsys.readouterr().err
    assert rc == 0, err
    ct = load_volume(SERIES)
    nifti = load_labels(out)
    names = {v: k for k, v in json.loads((tmp_path / "labels.json").read_text())["labels"].items() if v}
    nifti_seg = Segmentation(nifti, names, {})
    assert np.unique(nifti.array).size > 1, "the test needs at least one organ found"
    back = read_dicom_seg(tmp_path / "labels.seg.dcm", ct)
    assert_same_organs(back, nifti_seg)
    dcm = hd.seg.segread(tmp_path / "labels.seg.dcm")
    value_of = {nm: v for v, nm in names.items()}
    hv = hd_volume_on_grid(dcm.get_volume(combine_segments=True), ct)
    relabelled = np.zeros_like(nifti.array)
    for n in dcm.segment_numbers:
        relabelled[hv == n] = value_of[dcm.get_segment_description(n).segment_label]
    np.testing.assert_array_equal(relabelled, nifti.array)


@pytest.mark.skipif(not (SUBJECT_B / "subjectB_ct_dicom").is_dir(), reason="shared TotalSegmentator example absent")
def test_subject_b_reference_labels_round_trip(tmp_path):
    """TotalSegmentator's labels of the JPEG 2000 series (a NIfTI with the rows stored the other way) put on
    the series' grid, written as DICOM-SEG and read back; highdicom's geometry must agree with the NIfTI's."""
    ct = load_volume(SUBJECT_B / "subjectB_ct_dicom")
    ref = load_labels(SUBJECT_B / "subjectB_labels.nii.gz")
    ct_c, ornt = ct.to_canonical()
    ref_c, _ = ref.to_canonical()
    np.testing.assert_allclose(ct_c.affine, ref_c.affine, atol=1e-2)
    labels = ct.from_canonical(ref_c.array.astype(np.uint8), ornt)
    names = {int(k): v for k, v in json.loads((SUBJECT_B / "labels.json").read_text()).items()}
    present = [int(v) for v in np.unique(labels.array) if v > 0]
    assert len(present) >= 5
    seg = Segmentation(labels, {v: names[v] for v in present}, {})
    out = tmp_path / "b.seg.dcm"
    assert write_dicom_seg(seg, ct, out) == len(present)
    back = read_dicom_seg(out, ct)
    assert_same_organs(back, seg)
    # independent of organscope's mapping: highdicom's volume vs the reference NIfTI, by world position
    dcm = hd.seg.segread(out)
    hv = hd_volume_on_grid(dcm.get_volume(combine_segments=True), ref)
    for n in dcm.segment_numbers:
        name = dcm.get_segment_description(n).segment_label
        value = next(v for v in present if names[v] == name)
        np.testing.assert_array_equal(hv == n, np.asarray(ref.array) == value, err_msg=name)
    liver = next(s for s in pydicom.dcmread(out).SegmentSequence if s.SegmentLabel == "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"


def test_non_dicom_input_is_refused_before_any_output(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["segment", "-i", str(EXAMPLE), "-o", str(out / "x.nii.gz"),
               "--dicom-seg", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "needs a DICOM series as input" in err and "NIfTI file" in err
    assert list(out.iterdir()) == []
    ct = load_volume(str(EXAMPLE))
    seg = Segmentation(ct.with_array(np.ones(ct.shape, np.uint8)), {1: "liver"}, {})
    with pytest.raises(InputError, match="needs a DICOM series"):
        write_dicom_seg(seg, ct, tmp_path / "x.dcm")


def test_empty_label_map_and_moved_source_are_clear_errors(tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(SERIES, folder)
    ct = load_volume(folder)
    empty = Segmentation(ct.with_array(np.zeros(ct.shape, np.uint8)), {1: "liver"}, {})
    with pytest.raises(InputError, match="No organ was found"):
        write_dicom_seg(empty, ct, tmp_path / "x.dcm")
    _, seg = known_3slice_labels()
    seg = Segmentation(ct.with_array(seg.labels.array), seg.names, {})
    (folder / "02.dcm").unlink()
    with pytest.raises(InputError, match="can no longer be read"):
        write_dicom_seg(seg, ct, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_code_table_resolves_in_pydicom_and_sides_get_modifiers():
    for name in SNOMED_TABLE:
        code = organ_code(name)  # every keyword exists in pydicom's SNOMED CT dictionary
        assert not code.generic and code.type.scheme_designator == "SCT"
    left = organ_code("kidney_left")
    assert (left.type.value, left.modifier.value) == ("64033007", "7771000")
    assert organ_code("Right Parotid").modifier.value == "24028007"
    assert organ_code("vertebrae_L1").type.value == "66794005"
    assert organ_code("gluteus_maximus_left").generic
