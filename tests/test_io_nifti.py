"""NIfTI reading/writing, label maps with sidecars, atomic writes, and rejection of bad inputs."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from organscope.errors import InputError
from organscope.io import load_labels, load_volume, save_labels, save_volume, validate_ct
from organscope.volume import Volume

# Permuted, flipped, anisotropic affine whose entries are exact in float32 (NIfTI stores float32).
AFFINE = np.array([
    [0.0, 0.0, -2.5, 120.5],
    [-0.75, 0.0, 0.0, 80.25],
    [0.0, 1.25, 0.0, -300.0],
    [0.0, 0.0, 0.0, 1.0],
])
# Oblique (rotated about z by atan(4/3)) and anisotropic.
OBLIQUE = np.array([
    [0.6 * 0.8, -0.8 * 0.9, 0.0, -10.3],
    [0.8 * 0.8, 0.6 * 0.9, 0.0, 20.7],
    [0.0, 0.0, 3.0, 55.1],
    [0.0, 0.0, 0.0, 1.0],
])
SHEARED = np.array([
    [-0.75, 0.0, 0.5, 120.5],
    [0.0, -1.25, 0.0, 80.25],
    [0.25, 0.0, 2.5, -300.0],
    [0.0, 0.0, 0.0, 1.0],
])


def ct_phantom(shape=(20, 16, 12)) -> np.ndarray:
    """Air around a water ellipsoid with a bony core, int16 HU."""
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r2 = i**2 + j**2 + k**2
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[r2 < 0.8] = 40
    arr[r2 < 0.1] = 900
    return arr


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def save_nifti(array, path, affine=AFFINE, **header):
    img = nib.Nifti1Image(array, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def test_roundtrip_keeps_int16_and_exact_affine(tmp_path):
    vol = Volume(ct_phantom(), AFFINE)
    out = tmp_path / "ct.nii.gz"
    save_volume(vol, out)
    back = load_volume(out)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


def test_uncompressed_nifti_is_not_copied_to_float(tmp_path):
    path = save_nifti(ct_phantom(), tmp_path / "ct.nii")
    vol = load_volume(path)
    assert vol.array.dtype == np.int16
    assert not vol.array.flags.owndata  # a view of nibabel's memory map, not a float copy


def test_scaled_nifti_gives_float32_hu(tmp_path):
    stored = (ct_phantom() + 1024).astype(np.int16)
    img = nib.Nifti1Image(stored, AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    vol = load_volume(tmp_path / "s.nii.gz")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, stored.astype(np.float32) * 2 - 1024)


def test_integer_shift_keeps_int16(tmp_path):
    stored = (ct_phantom() + 1024).astype(np.uint16)
    img = nib.Nifti1Image(stored, AFFINE)
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    vol = load_volume(tmp_path / "s.nii.gz")
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, ct_phantom())


def test_save_labels_writes_map_and_sidecar(tmp_path):
    grid = Volume(ct_phantom(), AFFINE, {"qform_code": 1, "sform_code": 2})
    labels = np.zeros(grid.shape, dtype=np.int64)
    labels[5:10, 4:8, 3:6] = 1
    labels[10:12, 4:8, 3:6] = 7
    out = tmp_path / "seg.nii.gz"
    save_labels(grid, labels, out, {1: "brainstem", 7: "mandible", 3: "parotid_right"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json", "seg.nii.gz"]
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    assert sidecar == {"labels": {"background": 0, "brainstem": 1, "parotid_right": 3, "mandible": 7}}
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(img.affine, AFFINE)
    np.testing.assert_array_equal(img.get_qform(), AFFINE)
    assert json.loads(img.header.extensions[0].get_content()) == sidecar
    back = load_labels(out)
    np.testing.assert_array_equal(back.array, labels)
    assert back.meta["label_names"] == {0: "background", 1: "brainstem", 3: "parotid_right", 7: "mandible"}


@pytest.mark.parametrize("affine", [OBLIQUE, SHEARED])
def test_oblique_and_sheared_grids(tmp_path, affine):
    grid = Volume(ct_phantom(), affine)
    save_volume(grid, tmp_path / "ct.nii.gz")
    save_labels(grid, np.zeros(grid.shape, np.uint8), tmp_path / "seg.nii.gz", {})
    for name in ("ct.nii.gz", "seg.nii.gz"):
        img = nib.load(str(tmp_path / name))
        np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)  # float32 in the header
        if affine is OBLIQUE:
            np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
        else:  # a shear cannot be a qform: the qform is marked unknown rather than approximated
            assert int(img.header["qform_code"]) == 0
    np.testing.assert_allclose(load_volume(tmp_path / "ct.nii.gz").affine, affine, atol=1e-5)


def test_save_labels_uses_uint16_above_255(tmp_path):
    grid = Volume(ct_phantom(), AFFINE)
    labels = np.zeros(grid.shape, dtype=np.int32)
    labels[0, 0, 0] = 300
    save_labels(grid, labels, tmp_path / "big.nii", {300: "organ_300"})
    assert nib.load(str(tmp_path / "big.nii")).get_data_dtype() == np.uint16


@pytest.mark.parametrize("names, bad_shape", [({}, False), ({1: "liver"}, True)])
def test_save_labels_rejects_bad_input_and_writes_nothing(tmp_path, names, bad_shape):
    grid = Volume(ct_phantom(), AFFINE)
    labels = np.ones(grid.shape if not bad_shape else (3, 3, 3), dtype=np.uint8)
    with pytest.raises(InputError) as exc:
        save_labels(grid, labels, tmp_path / "seg.nii.gz", names)
    one_line_error(exc)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_output_and_keeps_old_file(tmp_path, monkeypatch):
    grid = Volume(ct_phantom(), AFFINE)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    (tmp_path / "old.nii.gz").write_bytes(b"previous result")

    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("organscope.io.nifti.nib.save", broken_save)
    with pytest.raises(InputError, match="Could not write"):
        save_labels(grid, labels, tmp_path / "seg.nii.gz", {})
    with pytest.raises(InputError):
        save_labels(grid, labels, tmp_path / "old.nii.gz", {})
    assert [p.name for p in tmp_path.iterdir()] == ["old.nii.gz"]
    assert (tmp_path / "old.nii.gz").read_bytes() == b"previous result"


def test_text_file_named_nii_gz(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError) as exc:
        load_volume(path)
    assert str(path) in one_line_error(exc)


def test_truncated_nii_gz(tmp_path):
    path = save_nifti(ct_phantom((40, 40, 30)), tmp_path / "ct.nii.gz")
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        load_volume(cut)
    assert "cut.nii.gz" in one_line_error(exc)


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    with pytest.raises(InputError) as exc:
        load_volume(path)
    one_line_error(exc)


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 1), (1, 64, 64)])
def test_2d_nifti(tmp_path, shape):
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[..., :10] = 50
    path = save_nifti(arr, tmp_path / "slice.nii.gz")
    with pytest.raises(InputError, match="is 2D") as exc:
        load_volume(path)
    one_line_error(exc)


def test_4d_nifti(tmp_path):
    path = save_nifti(np.zeros((8, 8, 8, 3), dtype=np.int16), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="4 dimensions") as exc:
        load_volume(path)
    one_line_error(exc)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda a: np.full(a.shape, np.nan, dtype=np.float32), "only NaN"),
        (lambda a: np.where(a > 500, np.inf, a).astype(np.float32), "NaN or infinite"),
        (lambda a: np.zeros(a.shape, dtype=np.int16), "constant"),
        (lambda a: ((a + 1000) * 2).astype(np.int16), "does not look like a CT"),  # MRI-like 0..3800, no air
        (lambda a: (a + 1000) / 2000.0, "does not look like a CT"),  # normalised 0..1
        (lambda a: a.astype(np.float32) * 100, "far outside"),
    ],
)
def test_not_a_ct(tmp_path, make, pattern):
    path = save_nifti(make(ct_phantom()), tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match=pattern) as exc:
        load_volume(path)
    assert "bad.nii.gz" in one_line_error(exc)


def test_real_ct_ranges_are_accepted():
    arr = ct_phantom().astype(np.int16)
    for low in (-1024, -2048, -3024):
        arr[0, 0, 0] = low
        arr[1, 1, 1] = 3071
        validate_ct(Volume(arr, AFFINE))


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="does not exist") as exc:
        load_volume(tmp_path / "nope.nii.gz")
    one_line_error(exc)
    other = tmp_path / "scan.png"
    other.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match="not a format") as exc:
        load_volume(other)
    one_line_error(exc)
