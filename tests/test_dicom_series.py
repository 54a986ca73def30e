"""DICOM series: geometry against the NRRD masks drawn on it, sorting, rescale, and broken series."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from organscope.errors import DicomSeriesError, InputError
from organscope.io import load_labels, load_volume
from organscope.io.dicom import find_series

DATA = Path(__file__).parent / "data" / "dcmqi-3slice"
SERIES = DATA / "ct-3slice"
SUBJECT_B = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-example"


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def craft_series(folder: Path, z_positions, *, series_uid=None, slope=None) -> Path:
    """Write one slice per z (LPS, mm) from the 3-slice series's first file, as a new series."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(SERIES / "01.dcm")
    series_uid = series_uid or generate_uid()
    for n, z in enumerate(z_positions, start=1):
        ds = template.copy()
        x, y, _ = (float(v) for v in template.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, float(z)]
        ds.InstanceNumber = n
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if slope is not None:
            ds.RescaleSlope = slope
        ds.save_as(folder / f"slice{n:03d}.dcm")
    return folder


def test_3slice_series_matches_its_nrrd_masks():
    ct = load_volume(SERIES)
    assert ct.shape == (512, 512, 3) and ct.array.dtype == np.int16
    np.testing.assert_allclose(ct.spacing_mm, [0.810547, 0.810547, 1.0], atol=1e-5)
    assert ct.axcodes == ("L", "P", "S")
    assert ct.array.min() <= -1000 and 1000 < ct.array.max() < 4000
    for name in ("liver_spine_seg.nrrd", "heart_seg.nrrd", "spine_seg.nrrd"):
        seg = load_labels(DATA / name)
        assert seg.shape == ct.shape
        np.testing.assert_allclose(seg.affine, ct.affine, atol=1e-3)
    seg = load_labels(DATA / "liver_spine_seg.nrrd").array
    heart = load_labels(DATA / "heart_seg.nrrd").array == 3
    assert 20 < np.median(ct.array[seg == 1]) < 150  # liver soft tissue
    assert np.median(ct.array[seg == 2]) > 150  # spine: bone
    # Anatomy in RAS mm: liver on the patient's right, heart on the left, spine posterior.
    liver, spine, heart = (ct.voxel_to_world(np.argwhere(m).mean(0))[0] for m in (seg == 1, seg == 2, heart))
    assert liver[0] > 30 and heart[0] < -30 and spine[1] < liver[1] - 50


def test_single_file_gives_its_series():
    a, b = load_volume(SERIES / "02.dcm"), load_volume(SERIES)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.meta["series_uid"] == b.meta["series_uid"]


def test_slices_sorted_by_position_not_file_name(tmp_path):
    folder = craft_series(tmp_path / "s", [-100.0, -104.0, -98.0, -102.0, -96.0])
    vol = load_volume(folder)
    assert vol.shape == (512, 512, 5)
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, 2.0])
    np.testing.assert_allclose(vol.voxel_to_world([[0, 0, 0]])[0][2], -104.0)


def test_integer_rescale_stays_int16_float_rescale_gives_float32(tmp_path):
    vol = load_volume(craft_series(tmp_path / "s", [0, 1, 2], slope=0.5))
    assert vol.array.dtype == np.float32
    ref = load_volume(SERIES)
    raw = pydicom.dcmread(SERIES / "01.dcm").pixel_array.astype(np.float32)
    np.testing.assert_allclose(vol.array[:, :, 0], (raw * 0.5 - 1024).T)
    np.testing.assert_array_equal(ref.array[:, :, 2], (raw - 1024).T.astype(np.int16))  # 01.dcm is the top slice


def test_missing_slice(tmp_path):
    folder = craft_series(tmp_path / "s", [0, 2, 4, 6, 8])
    (folder / "slice003.dcm").unlink()
    with pytest.raises(DicomSeriesError, match=r"gap between slice 2 and 3 \(4.0 mm, expected 2.0 mm\)") as exc:
        load_volume(folder)
    assert "1 slice appears to be missing" in one_line(exc)


def test_missing_middle_of_three_slices(tmp_path):
    folder = tmp_path / "s"
    shutil.copytree(SERIES, folder)
    (folder / "02.dcm").unlink()
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SpacingBetweenSlices = 1.0
        ds.save_as(f)
    with pytest.raises(DicomSeriesError, match="gap") as exc:
        load_volume(folder)
    one_line(exc)


def test_uneven_spacing(tmp_path):
    folder = craft_series(tmp_path / "s", [0, 2, 4, 6.5, 8, 10])
    with pytest.raises(DicomSeriesError, match="unevenly spaced") as exc:
        load_volume(folder)
    one_line(exc)


def test_duplicated_positions(tmp_path):
    folder = craft_series(tmp_path / "s", [0, 2, 2, 4])
    with pytest.raises(DicomSeriesError, match="duplicated positions") as exc:
        load_volume(folder)
    one_line(exc)


def test_several_series_need_a_uid(tmp_path):
    uid_a, uid_b = generate_uid(), generate_uid()
    craft_series(tmp_path / "mix", [0, 2, 4], series_uid=uid_a)
    other = craft_series(tmp_path / "tmp_b", [10, 12, 14, 16], series_uid=uid_b)
    for f in other.iterdir():
        shutil.move(f, tmp_path / "mix" / f"b_{f.name}")
    (tmp_path / "mix" / "readme.txt").write_text("not dicom")
    assert {s.uid for s in find_series(tmp_path / "mix")} == {uid_a, uid_b}
    with pytest.raises(DicomSeriesError, match="holds 2 DICOM series") as exc:
        load_volume(tmp_path / "mix")
    assert uid_a in one_line(exc) and uid_b in str(exc.value)
    assert load_volume(tmp_path / "mix", series_uid=uid_b).shape == (512, 512, 4)
    assert load_volume(tmp_path / "mix" / "b_slice001.dcm").shape == (512, 512, 4)
    with pytest.raises(DicomSeriesError, match="has no series"):
        load_volume(tmp_path / "mix", series_uid="1.2.3")


def test_single_slice_is_2d(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(SERIES / "01.dcm", folder)
    with pytest.raises(InputError, match="2D") as exc:
        load_volume(folder)
    one_line(exc)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="no DICOM image slices") as exc:
        load_volume(tmp_path)
    one_line(exc)


@pytest.mark.skipif(not (SUBJECT_B / "subjectB_ct_dicom").is_dir(), reason="shared TotalSegmentator example absent")
def test_subject_b_jpeg2000_series_matches_its_labels():
    ct = load_volume(SUBJECT_B / "subjectB_ct_dicom")
    assert ct.shape == (512, 512, 20) and ct.array.dtype == np.int16
    np.testing.assert_allclose(ct.spacing_mm, [0.9765625, 0.9765625, 2.0], atol=1e-4)
    labels = load_labels(SUBJECT_B / "subjectB_labels.nii.gz")
    assert labels.shape == ct.shape
    # The NIfTI stores the rows in the opposite order (j flipped), so compare the same grids in RAS+.
    ct_c, _ = ct.to_canonical()
    lab_c, _ = labels.to_canonical()
    np.testing.assert_allclose(ct_c.affine, lab_c.affine, atol=1e-2)
    names = {int(k): v for k, v in json.loads((SUBJECT_B / "labels.json").read_text()).items()}
    assert names[5] == "liver"
    liver = ct_c.array[lab_c.array == 5]
    assert liver.size > 10000 and 60 < np.median(liver) < 130  # venous phase liver, about 89 HU
    assert ct.array.min() <= -1000
