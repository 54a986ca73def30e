"""NRRD and MetaImage reading with known LPS geometry -> the right RAS affine and axis order."""
from __future__ import annotations

import zlib

import nrrd
import numpy as np
import pytest

from organscope.errors import GeometryError, InputError
from organscope.io import load_labels, load_volume, save_labels, save_volume
from organscope.volume import Volume

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (12, 9, 7)  # all different, so a wrong axis order cannot pass
MARK = (8, 2, 5)  # a voxel set to a unique value
# Direction of array axis i (rows), in LPS: oblique, a permutation and unequal spacings.
DIRS_LPS = np.array([[0.0, 0.6, 0.8], [0.0, -0.8, 0.6], [1.0, 0.0, 0.0]]) * np.array([[0.7], [1.1], [2.5]])
ORIGIN_LPS = np.array([-120.0, 35.5, -410.25])


def expected_ras_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = DIRS_LPS.T
    lps[:3, 3] = ORIGIN_LPS
    return FLIP @ lps


def phantom(dtype=np.int16) -> np.ndarray:
    arr = np.full(SHAPE, -1000, dtype=dtype)
    arr[2:10, 2:7, 1:6] = 40
    arr[MARK] = 1234
    return arr


def check(vol: Volume, affine=None) -> None:
    affine = expected_ras_affine() if affine is None else affine
    assert vol.shape == SHAPE
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.array[MARK] == 1234 and np.count_nonzero(vol.array == 1234) == 1
    # The marked voxel's world position, computed by hand in LPS and flipped.
    lps = ORIGIN_LPS + np.asarray(MARK, dtype=float) @ DIRS_LPS
    np.testing.assert_allclose(vol.voxel_to_world([MARK])[0], lps * [-1, -1, 1], atol=1e-6)


# --- NRRD -----------------------------------------------------------------------------------------

def write_nrrd(path, array, space="left-posterior-superior", dirs=DIRS_LPS, origin=ORIGIN_LPS, **extra):
    header = {"space": space, "space directions": dirs, "space origin": origin, "kinds": ["domain"] * 3}
    header.update(extra)
    nrrd.write(str(path), array, header, index_order="F")
    return path


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_nrrd_lps_to_ras(tmp_path, encoding):
    check(load_volume(write_nrrd(tmp_path / "ct.nrrd", phantom(), encoding=encoding)))


def test_nrrd_ras_space_is_not_flipped(tmp_path):
    vol = load_volume(write_nrrd(tmp_path / "ct.nrrd", phantom(), space="RAS"))
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = DIRS_LPS.T, ORIGIN_LPS
    np.testing.assert_allclose(vol.affine, lps, atol=1e-6)


def test_nhdr_detached(tmp_path):
    header = {"space": "LPS", "space directions": DIRS_LPS, "space origin": ORIGIN_LPS, "encoding": "raw"}
    nrrd.write(str(tmp_path / "ct.nhdr"), phantom(), header, detached_header=True, index_order="F")
    check(load_volume(tmp_path / "ct.nhdr"))


def test_nrrd_without_patient_space(tmp_path):
    path = tmp_path / "ct.nrrd"
    nrrd.write(str(path), phantom(), {"spacings": [1.0, 1.0, 2.0]}, index_order="F")
    with pytest.raises(GeometryError, match="patient coordinates"):
        load_volume(path)


def test_nrrd_save_roundtrip(tmp_path):
    vol = Volume(phantom(), expected_ras_affine())
    save_volume(vol, tmp_path / "out.nrrd")
    _, header = nrrd.read(str(tmp_path / "out.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], DIRS_LPS, atol=1e-9)
    check(load_volume(tmp_path / "out.nrrd"))
    labels = (vol.array > 0).astype(np.uint8)
    save_labels(vol, labels, tmp_path / "seg.nrrd", {1: "liver"})
    back = load_labels(tmp_path / "seg.nrrd")
    assert back.array.dtype == np.uint8 and back.meta["label_names"] == {0: "background", 1: "liver"}
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)


def test_corrupt_nrrd(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_text("hello\n")
    with pytest.raises(InputError, match="bad.nrrd"):
        load_volume(path)


# --- MetaImage ------------------------------------------------------------------------------------

def mha_header(array, compressed=False, data_file="LOCAL", msb=False) -> str:
    matrix = " ".join(f"{v:.10g}" for v in (DIRS_LPS / np.linalg.norm(DIRS_LPS, axis=1)[:, None]).ravel())
    etype = {"int16": "MET_SHORT", "uint8": "MET_UCHAR", "float32": "MET_FLOAT"}[array.dtype.name]
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        f"BinaryDataByteOrderMSB = {msb}",
        f"CompressedData = {compressed}",
        f"TransformMatrix = {matrix}",
        f"Offset = {' '.join(str(v) for v in ORIGIN_LPS)}",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        f"ElementSpacing = {' '.join(str(v) for v in np.linalg.norm(DIRS_LPS, axis=1))}",
        f"DimSize = {' '.join(str(n) for n in array.shape)}",
        f"ElementType = {etype}",
        f"ElementDataFile = {data_file}",
    ]
    return "\n".join(lines) + "\n"


def raw_bytes(array, compressed=False, msb=False) -> bytes:
    data = array.astype(array.dtype.newbyteorder(">" if msb else "<")).tobytes(order="F")  # x fastest
    return zlib.compress(data) if compressed else data


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_mha_local(tmp_path, compressed, dtype):
    arr = phantom(dtype)
    path = tmp_path / "ct.mha"
    path.write_bytes(mha_header(arr, compressed).encode() + raw_bytes(arr, compressed))
    vol = load_volume(path)
    assert vol.array.dtype == dtype
    check(vol)


def test_mha_big_endian(tmp_path):
    arr = phantom()
    path = tmp_path / "ct.mha"
    path.write_bytes(mha_header(arr, msb=True).encode() + raw_bytes(arr, msb=True))
    vol = load_volume(path)
    assert vol.array.dtype == np.int16 and vol.array.dtype.isnative
    check(vol)


@pytest.mark.parametrize("compressed", [False, True])
def test_mhd_with_raw_file(tmp_path, compressed):
    arr = phantom()
    name = "ct.zraw" if compressed else "ct.raw"
    (tmp_path / name).write_bytes(raw_bytes(arr, compressed))
    (tmp_path / "ct.mhd").write_text(mha_header(arr, compressed, data_file=name))
    check(load_volume(tmp_path / "ct.mhd"))


def test_mha_and_nrrd_agree(tmp_path):
    arr = phantom()
    (tmp_path / "a.mha").write_bytes(mha_header(arr).encode() + raw_bytes(arr))
    a = load_volume(tmp_path / "a.mha")
    b = load_volume(write_nrrd(tmp_path / "b.nrrd", arr))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    np.testing.assert_array_equal(a.array, b.array)


def test_truncated_mha(tmp_path):
    arr = phantom()
    path = tmp_path / "ct.mha"
    path.write_bytes(mha_header(arr).encode() + raw_bytes(arr)[:100])
    with pytest.raises(InputError, match="truncated"):
        load_volume(path)


def test_not_a_metaimage(tmp_path):
    path = tmp_path / "ct.mha"
    path.write_bytes(b"\x00\xff" * 500)
    with pytest.raises(InputError, match="not a MetaImage"):
        load_volume(path)


def test_mha_without_spacing(tmp_path):
    arr = phantom()
    text = "".join(line + "\n" for line in mha_header(arr).splitlines() if not line.startswith("ElementSpacing"))
    path = tmp_path / "ct.mha"
    path.write_bytes(text.encode() + raw_bytes(arr))
    with pytest.raises(GeometryError, match="ElementSpacing"):
        load_volume(path)
