"""Bad input to `segment` and `query`: exit status 2, exactly one line on stderr starting "organscope: error:",
no traceback, no warning, and no output file (nor sidecar, nor temp file) left behind."""
import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.cli import main


def _good_bytes():
    shape = (16, 16, 8)
    arr = np.full(shape, -1000, np.int16)
    arr[3:13, 3:13, 1:7] = 40
    img = nib.Nifti1Image(arr, np.diag([1.5, 1.5, 3.0, 1.0]))
    return gzip.compress(img.to_bytes(), compresslevel=1)


def _nifti(path, arr, affine=np.eye(4)):
    syn.save_nifti(path, arr, affine)


def make_bad(kind, folder):
    """Create the bad input `kind` in `folder` and return its path."""
    p = folder / "scan.nii.gz"
    if kind == "text_named_nii_gz":
        p.write_text("this is a text file, not a CT volume\n")
    elif kind == "plain_gzip_not_nifti":
        p.write_bytes(gzip.compress(b"not a nifti header" * 50))
    elif kind == "truncated_gzip":
        data = _good_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt_gzip":
        data = bytearray(_good_bytes())
        data[20:60] = bytes(40)
        p.write_bytes(bytes(data))
    elif kind == "nifti_2d":
        _nifti(p, np.where(np.arange(400).reshape(20, 20) % 7 == 0, -1000, 40).astype(np.int16))
    elif kind == "nifti_single_slice":
        _nifti(p, np.where(np.arange(400).reshape(20, 20, 1) % 7 == 0, -1000, 40).astype(np.int16))
    elif kind == "all_nan":
        _nifti(p, np.full((8, 8, 8), np.nan, np.float32))
    elif kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "missing_path":
        p = folder / "does_not_exist.nii.gz"
    elif kind == "wrong_extension":
        p = folder / "scan.txt"
        p.write_text("1 2 3\n")
    elif kind == "directory_without_dicom":
        p = folder / "empty_dir"
        p.mkdir()
    else:
        raise AssertionError(kind)
    return p


BAD_FILES = ["text_named_nii_gz", "plain_gzip_not_nifti", "truncated_gzip", "corrupt_gzip", "nifti_2d",
             "nifti_single_slice", "all_nan", "empty_file", "missing_path", "wrong_extension",
             "directory_without_dicom"]


def run_cli(capsys, argv):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err, [str(w.message) for w in caught]


def assert_one_error_line(rc, out, err, caught):
    assert rc == 2, (rc, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("organscope: error: "), err
    assert "Traceback" not in err
    assert not caught, caught
    assert out == ""


@pytest.fixture
def dirs(tmp_path):
    inp, outd = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    outd.mkdir()
    return inp, outd


@pytest.mark.parametrize("kind", BAD_FILES)
def test_segment_bad_file(capsys, dirs, synthetic_model_path, kind):
    inp, outd = dirs
    scan = make_bad(kind, inp)
    rc, out, err, caught = run_cli(capsys, ["segment", "-i", scan, "-o", outd / "seg.nii.gz",
                                            "--model", synthetic_model_path, "--no-progress"])
    assert_one_error_line(rc, out, err, caught)
    assert list(outd.iterdir()) == []


@pytest.mark.parametrize("kind", BAD_FILES)
def test_query_bad_file(capsys, dirs, synthetic_model_path, kind):
    inp, _ = dirs
    scan = make_bad(kind, inp)
    rc, out, err, caught = run_cli(capsys, ["query", scan, "--point", "1,2,3", "--model", synthetic_model_path])
    assert_one_error_line(rc, out, err, caught)


@pytest.mark.parametrize("points", [
    ["--point", "500,0,0"],                                # outside the scan (mm)
    ["--point=-500,-500,-500"],
    ["--voxel", "--point", "0,0,9999"],                    # outside the scan (voxels)
    ["--voxel", "--point=-1,0,0"],
    ["--point", "1,2"],                                    # malformed
    ["--point", "1,2,3,4"],
    ["--point", "a,b,c"],
    ["--point", "1;2"],
    ["--point", ""],
    [],                                                    # no point at all
])
def test_query_bad_points(capsys, phantom_files, synthetic_model_path, points):
    rc, out, err, caught = run_cli(capsys, ["query", phantom_files["RAS"], *points, "--model", synthetic_model_path])
    assert_one_error_line(rc, out, err, caught)


@pytest.mark.parametrize("point", ["nan,1,2", "1,inf,2"])
def test_query_non_finite_point(capsys, phantom_files, synthetic_model_path, point):
    rc, out, err, caught = run_cli(capsys, ["query", phantom_files["RAS"], "--point", point,
                                            "--model", synthetic_model_path])
    assert_one_error_line(rc, out, err, caught)
    assert "outside" not in err


@pytest.mark.parametrize("content", [None, "x,y,z\n", "1,2,3\n4,5\n", "1,2,3\nfoo,bar,baz\n"])
def test_query_bad_csv(capsys, tmp_path, phantom_files, synthetic_model_path, content):
    csv_file = tmp_path / "points.csv"
    if content is not None:
        csv_file.write_text(content)
    rc, out, err, caught = run_cli(capsys, ["query", phantom_files["RAS"], "--csv", csv_file,
                                            "--model", synthetic_model_path])
    assert_one_error_line(rc, out, err, caught)


@pytest.mark.parametrize("model", ["missing.onnx", "corrupt.onnx", "no_such_shipped_model"])
@pytest.mark.parametrize("command", ["segment", "query"])
def test_bad_model(capsys, tmp_path, phantom_files, synthetic_model_path, model, command):
    path = tmp_path / model
    if model == "corrupt.onnx":
        path.write_bytes(b"garbage")
        path.with_suffix(".json").write_text(synthetic_model_path.with_suffix(".json").read_text())
    if model == "no_such_shipped_model":
        path = model
    outd = tmp_path / "out"
    outd.mkdir()
    if command == "segment":
        argv = ["segment", "-i", phantom_files["RAS"], "-o", outd / "seg.nii.gz", "--model", path, "--no-progress"]
    else:
        argv = ["query", phantom_files["RAS"], "--point", "1,2,3", "--model", path]
    rc, out, err, caught = run_cli(capsys, argv)
    assert_one_error_line(rc, out, err, caught)
    assert list(outd.iterdir()) == []


@pytest.mark.parametrize("target", ["missing_folder/seg.nii.gz", "seg.txt"])
def test_segment_unwritable_output(capsys, tmp_path, phantom_files, synthetic_model_path, target):
    outd = tmp_path / "out"
    outd.mkdir()
    rc, out, err, caught = run_cli(capsys, ["segment", "-i", phantom_files["RAS"], "-o", outd / target,
                                            "--model", synthetic_model_path, "--no-progress"])
    assert_one_error_line(rc, out, err, caught)
    assert list(outd.iterdir()) == []


@pytest.mark.parametrize("problem", ["invalid_json", "missing_pattern", "missing_classes", "unknown_setting"])
def test_bad_model_card(capsys, tmp_path, phantom_files, synthetic_model_path, problem):
    import json
    import shutil

    model = tmp_path / "model.onnx"
    shutil.copy(synthetic_model_path, model)
    card = json.loads(synthetic_model_path.with_suffix(".json").read_text())
    if problem == "missing_pattern":
        del card["pattern"]
    elif problem == "missing_classes":
        del card["classes"]
    elif problem == "unknown_setting":
        card["segmentation"] = {"levels": [8.0]}
    text = "{not json" if problem == "invalid_json" else json.dumps(card)
    model.with_suffix(".json").write_text(text)
    rc, out, err, caught = run_cli(capsys, ["query", phantom_files["RAS"], "--point", "1,2,3", "--model", model])
    assert_one_error_line(rc, out, err, caught)
