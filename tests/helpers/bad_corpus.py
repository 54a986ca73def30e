"""A generated corpus of bad inputs: each generator writes one small bad input into a folder and returns its path.
Used by tests/test_bad_input_corpus.py and benchmarks/bad_input_corpus.py."""
from __future__ import annotations

import gzip
import os
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

DICOM_SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi-3slice" / "ct-3slice"


def ct_array(shape=(24, 24, 12), dtype=np.int16):
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[4:20, 4:20, 2:10] = 40
    arr[10:14, 10:14, 3:9] = 700
    return arr.astype(dtype)


def good_nifti_bytes(arr=None, affine=None):
    img = nib.Nifti1Image(ct_array() if arr is None else arr, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine)
    return gzip.compress(img.to_bytes(), compresslevel=1)


def _nii(folder, arr, affine=None, name="scan.nii.gz"):
    p = Path(folder) / name
    p.write_bytes(good_nifti_bytes(arr, affine))
    return p


def _patch_header(folder, offset, value_bytes, arr=None):
    raw = bytearray(gzip.decompress(good_nifti_bytes(arr)))
    raw[offset:offset + len(value_bytes)] = value_bytes
    p = Path(folder) / "scan.nii.gz"
    p.write_bytes(gzip.compress(bytes(raw)))
    return p


def _bitflip(seed):
    def make(folder):
        data = bytearray(good_nifti_bytes())
        rng = random.Random(seed)
        pos = rng.randrange(12, len(data) - 8)  # inside the deflate stream (not the gzip header's free fields)
        data[pos] ^= 1 << rng.randrange(8)
        p = Path(folder) / "scan.nii.gz"
        p.write_bytes(bytes(data))
        return p
    return make


def _mha(folder, header_lines, data=b"", name="scan.mha"):
    p = Path(folder) / name
    p.write_bytes(("\n".join(header_lines) + "\n").encode() + data)
    return p


MHA_HEAD = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
            "ElementSpacing = 1 1 1", "ElementType = MET_SHORT"]


def _nrrd_text(sizes="24 24 12", extra=()):
    return "\n".join(["NRRD0004", "type: short", "dimension: 3", "space: left-posterior-superior",
                      f"sizes: {sizes}", "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (0,0,0)", "endian: little",
                      *extra]) + "\n"


def _dicom_copy(folder):
    d = Path(folder) / "series"
    shutil.copytree(DICOM_SERIES, d)
    return d


def make_corpus():
    """name -> generator(folder) -> path of the bad input."""
    c = {}
    c["text_named_nii_gz"] = lambda f: (Path(f) / "scan.nii.gz").write_text("not a CT\n") and Path(f) / "scan.nii.gz"
    c["empty_file"] = lambda f: (Path(f) / "scan.nii.gz").write_bytes(b"") or Path(f) / "scan.nii.gz"
    c["plain_gzip_not_nifti"] = lambda f: (Path(f) / "scan.nii.gz").write_bytes(gzip.compress(b"x" * 500)) and \
        Path(f) / "scan.nii.gz"

    def truncated(f):
        d = good_nifti_bytes()
        (Path(f) / "scan.nii.gz").write_bytes(d[: len(d) * 2 // 3])
        return Path(f) / "scan.nii.gz"
    c["truncated_gzip"] = truncated

    def bad_crc(f):
        d = bytearray(good_nifti_bytes())
        d[-8] ^= 0xFF  # the CRC32 in the gzip trailer
        (Path(f) / "scan.nii.gz").write_bytes(bytes(d))
        return Path(f) / "scan.nii.gz"
    c["gzip_crc_wrong"] = bad_crc

    def trailing(f):
        (Path(f) / "scan.nii.gz").write_bytes(good_nifti_bytes() + b"garbage after the stream")
        return Path(f) / "scan.nii.gz"
    c["gzip_trailing_garbage"] = trailing
    for seed in range(6):
        c[f"bit_flip_{seed}"] = _bitflip(seed)
    c["datatype_code_1"] = lambda f: _patch_header(f, 70, np.int16(1).tobytes())
    c["datatype_code_9999"] = lambda f: _patch_header(f, 70, np.int16(9999).tobytes())
    c["huge_dims_tiny_data"] = lambda f: _patch_header(f, 40, np.array([3, 30000, 30000, 30000], np.int16).tobytes())
    c["negative_dims"] = lambda f: _patch_header(f, 40, np.array([3, -24, 24, 12], np.int16).tobytes())
    c["nifti_2d"] = lambda f: _nii(f, ct_array()[:, :, 0])
    c["nifti_single_slice"] = lambda f: _nii(f, ct_array()[:, :, :1])
    c["nifti_4d"] = lambda f: _nii(f, np.stack([ct_array()] * 2, axis=-1))
    c["nifti_zero_size"] = lambda f: _nii(f, np.zeros((0, 4, 4), np.int16))
    c["all_nan"] = lambda f: _nii(f, np.full((8, 8, 8), np.nan, np.float32))
    c["some_nan"] = lambda f: _nii(f, np.where(ct_array() > 0, np.nan, ct_array()).astype(np.float32))
    c["some_inf"] = lambda f: _nii(f, np.where(ct_array() > 0, np.inf, ct_array()).astype(np.float32))
    c["constant"] = lambda f: _nii(f, np.zeros((8, 8, 8), np.int16))
    c["spacing_zero"] = lambda f: _patch_header(f, 280, np.zeros(4, np.float32).tobytes())  # sform row x
    c["spacing_1e6"] = lambda f: _nii(f, ct_array(), np.diag([1e6, 1e6, 1e6, 1.0]))
    c["spacing_nan"] = lambda f: _patch_header(f, 280, np.array([np.nan, 0, 0, 0], np.float32).tobytes())
    c["uint8_photo"] = lambda f: _nii(f, (np.random.RandomState(0).rand(24, 24, 12) * 255).astype(np.uint8))
    c["int8_hu_over_10"] = lambda f: _nii(f, (ct_array() // 10).clip(-128, 127).astype(np.int8))
    c["int16_hu_over_10"] = lambda f: _nii(f, (ct_array() // 10).clip(-128, 127).astype(np.int16))
    c["mri_like_float"] = lambda f: _nii(f, np.random.RandomState(1).rand(24, 24, 12).astype(np.float32))
    c["bool_mask"] = lambda f: _nii(f, (ct_array() > 0).astype(np.uint8))
    c["missing_path"] = lambda f: Path(f) / "nope.nii.gz"
    c["wrong_extension"] = lambda f: (Path(f) / "scan.txt").write_text("1 2 3") and Path(f) / "scan.txt"

    def empty_dir(f):
        (Path(f) / "empty").mkdir()
        return Path(f) / "empty"
    c["directory_with_no_scans"] = empty_dir

    def loop(f):
        a = Path(f) / "loop.nii.gz"
        os.symlink(a, a)
        return a
    c["symlink_loop"] = loop

    def unreadable(f):
        p = _nii(f, ct_array())
        os.chmod(p, 0)
        return p
    c["unreadable_permissions"] = unreadable
    c["mha_negative_dimsize"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = -5 24 12", "ElementDataFile = LOCAL"])
    c["mha_huge_dimsize"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = 100000 100000 100000", "ElementDataFile = LOCAL"],
                                           b"\0" * 64)
    c["mha_truncated"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = 24 24 12", "ElementDataFile = LOCAL"], b"\0" * 100)
    c["mha_external_absolute"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = 2 2 2", "ElementDataFile = /etc/passwd"],
                                                name="scan.mhd")
    c["mha_external_dotdot"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = 2 2 2",
                                                             "ElementDataFile = ../../outside.raw"], name="scan.mhd")
    c["mha_external_missing"] = lambda f: _mha(f, MHA_HEAD + ["DimSize = 2 2 2", "ElementDataFile = gone.raw"],
                                               name="scan.mhd")

    def mha_bomb(f):
        data = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB, header says 8 voxels
        return _mha(f, MHA_HEAD + ["DimSize = 2 2 2", "CompressedData = True", "ElementDataFile = LOCAL"], data)
    c["mha_compressed_constant"] = mha_bomb

    def nrrd_write(f, text, data=b"", name="scan.nrrd"):
        p = Path(f) / name
        p.write_bytes(text.encode() + b"\n" + data)
        return p
    c["nrrd_negative_sizes"] = lambda f: nrrd_write(f, _nrrd_text("-24 24 12", ["encoding: raw"]))
    c["nrrd_huge_sizes"] = lambda f: nrrd_write(f, _nrrd_text("100000 100000 100000", ["encoding: raw"]))
    c["nrrd_external_absolute"] = lambda f: nrrd_write(f, _nrrd_text("2 2 2", ["encoding: raw",
                                                                               "data file: /etc/passwd"]),
                                                       name="scan.nhdr")
    c["nrrd_external_dotdot"] = lambda f: nrrd_write(f, _nrrd_text("2 2 2", ["encoding: raw",
                                                                             "data file: ../../x.raw"]),
                                                     name="scan.nhdr")
    c["nrrd_gzip_bomb"] = lambda f: nrrd_write(f, _nrrd_text("24 24 12", ["encoding: gzip"]),
                                               gzip.compress(b"\0" * (64 << 20)))
    c["nrrd_truncated"] = lambda f: nrrd_write(f, _nrrd_text("24 24 12", ["encoding: raw"]), b"\0" * 100)

    def dicom_missing_slice(f):
        d = _dicom_copy(f)
        files = sorted(d.iterdir())
        files[len(files) // 2].unlink()
        return d
    c["dicom_missing_middle_slice"] = dicom_missing_slice

    def dicom_truncated(f):
        d = _dicom_copy(f)
        p = sorted(d.iterdir())[0]
        p.write_bytes(p.read_bytes()[:1200])
        return d
    c["dicom_truncated_slice"] = dicom_truncated

    def dicom_truncated_pixels(f):
        d = _dicom_copy(f)
        p = sorted(d.iterdir())[1]
        p.write_bytes(p.read_bytes()[:-5000])
        return d
    c["dicom_truncated_pixel_data"] = dicom_truncated_pixels

    def dicom_duplicate(f):
        import pydicom
        d = _dicom_copy(f)
        files = sorted(d.iterdir())
        ds = pydicom.dcmread(files[0])
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(d / "dup.dcm")
        return d
    c["dicom_duplicate_slice"] = dicom_duplicate

    def dicom_mixed(f):
        import pydicom
        d = _dicom_copy(f)
        files = sorted(d.iterdir())
        ds = pydicom.dcmread(files[0])
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".7"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".7"
        ds.save_as(d / "other_series.dcm")
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".8"
        ds.ImagePositionPatient = [float(v) + (10 if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)]
        ds.save_as(d / "other_series2.dcm")
        return d
    c["dicom_mixed_series"] = dicom_mixed

    def dicom_rtdose_only(f):
        import pydicom
        d = Path(f) / "dose"
        d.mkdir()
        for k, src in enumerate(sorted(DICOM_SERIES.iterdir())):
            ds = pydicom.dcmread(src)
            ds.Modality = "RTDOSE"
            ds.save_as(d / f"dose{k}.dcm")
        return d
    c["dicom_rtdose_only"] = dicom_rtdose_only

    def dicom_single(f):
        d = _dicom_copy(f)
        for p in sorted(d.iterdir())[1:]:
            p.unlink()
        return d
    c["dicom_single_slice"] = dicom_single
    return c


CORPUS = make_corpus()
#: Inputs that are not bad references for evaluate (a uint8 or 0/1 volume can be a label map).
NOT_FOR_EVALUATE = {"uint8_photo", "bool_mask"}
#: Inputs that cannot be made as root (root reads any file).
NEEDS_NON_ROOT = {"unreadable_permissions"}
