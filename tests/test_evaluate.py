import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from organscope.errors import InputError
from organscope.metrics.report import evaluate_dirs, main_evaluate, score_case

AFFINE = np.diag([2.0, 1.0, 3.0, 1.0])
SHAPE = (12, 12, 12)


def _save(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(path))


def _labels(brainstem=True, parotid=None):
    a = np.zeros(SHAPE, np.uint8)
    if brainstem:
        a[6:9, 6:9, 6:9] = 1
    if parotid is not None:
        a[parotid:parotid + 4, 2:6, 2:4] = 2
    return a


@pytest.fixture
def folders(tmp_path):
    """Case A: both organs contoured; the prediction numbers organs differently (sidecar) and
    misplaces the parotid by one voxel. Case B: parotid not contoured but predicted. Case C: wrong
    grid. Case D: no prediction."""
    root = tmp_path / "data"
    ref, pred = root / "labels", tmp_path / "pred"
    ref.mkdir(parents=True)
    pred.mkdir()
    meta = {"labels": {"background": 0, "brainstem": 1, "parotid_left": 2},
            "cases": [{"case": "A", "organs": ["brainstem", "parotid_left"]},
                      {"case": "B", "organs": ["brainstem"]}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    _save(ref / "A.nii.gz", _labels(parotid=2))
    a = _labels(parotid=3)
    a[a == 2] = 7
    _save(pred / "A.nii.gz", a)
    (pred / "A.json").write_text(json.dumps({"labels": {"background": 0, "Brainstem": 1, "Parotid gland left": 7}}))
    _save(ref / "B.nii.gz", _labels())
    _save(pred / "B.nii.gz", _labels(parotid=2))  # predicts the uncontoured parotid: must not count
    _save(ref / "C.nii.gz", _labels())
    _save(pred / "C.nii.gz", _labels(), affine=np.diag([2.0, 1.0, 2.5, 1.0]))
    _save(ref / "D.nii.gz", _labels())
    return pred, ref


def test_evaluate_dirs(folders):
    pred, ref = folders
    r = evaluate_dirs(pred, ref)  # dataset.json found above the labels folder
    got = {(s.case, s.organ): s for s in r.scores}
    assert sorted(got) == [("A", "brainstem"), ("A", "parotid_left"), ("B", "brainstem")]
    par = got["A", "parotid_left"]
    assert par.dice == pytest.approx(2 * 24 / 64) and par.jaccard == pytest.approx(24 / 40)
    assert par.hd95_mm == pytest.approx(2.0) and par.nsd == pytest.approx(1.0)  # shift of 2 mm, tolerance 2
    assert (par.ref_voxels, par.pred_voxels) == (32, 32)
    assert got["A", "brainstem"].dice == 1.0 and got["B", "brainstem"].hd95_mm == 0.0
    assert list(r.errors) == ["C"] and "grid" in r.errors["C"]
    assert r.missing_predictions == ("D",)
    s = r.summary()
    assert s["brainstem"].n == 2 and s["parotid_left"].n == 1
    assert r.mean_row()["dice"] == pytest.approx((1.0 + 0.75) / 2)
    narrow = evaluate_dirs(pred, ref, tolerance_mm=1.0, organs=["Parotid Left"])
    assert [x.organ for x in narrow.scores] == ["parotid_left"]
    # a 4x4x2 box is all surface: per side 24 voxels at 0 mm and the 8 of the leading face at 2 mm
    assert narrow.scores[0].nsd == pytest.approx(48 / 64)


def test_main_evaluate_writes_table_csv_json(folders, capsys):
    pred, ref = folders
    assert main_evaluate(pred, ref) == 1  # case C has an error
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["organ", "n", "Dice", "Jaccard", "NSD@2mm", "HD95", "mm"]
    assert lines[2].split() == ["brainstem", "2", "1.000", "±", "0.000", "1.000", "±", "0.000",
                                "1.000", "±", "0.000", "0.00", "±", "0.00"]
    assert lines[3].split()[:5] == ["parotid_left", "1", "0.750", "±", "0.000"]
    assert lines[5].split() == ["mean", "0.875", "0.800", "1.000", "1.00"]
    assert "2 case(s) scored" in out and "error: C:" in err and "no prediction for 1" in err
    with open(pred / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["case"], x["organ"]) for x in rows] == [("A", "brainstem"), ("A", "parotid_left"), ("B", "brainstem")]
    assert float(rows[1]["dice"]) == pytest.approx(0.75)
    j = json.loads((pred / "evaluation.json").read_text())
    assert j["summary"]["parotid_left"]["n"] == 1 and j["cases"]["B"].keys() == {"brainstem"}
    assert j["errors"].keys() == {"C"} and j["missing_predictions"] == ["D"]
    assert j["mean"]["dice"] == pytest.approx(0.875)


def test_missing_organ_and_sidecar_reference(tmp_path):
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    _save(ref / "X.nii.gz", _labels(parotid=2))
    (ref / "X.json").write_text(json.dumps({"labels": {"brainstem": 1, "parotid_left": 2}}))
    _save(pred / "X.nii.gz", _labels())  # parotid not predicted
    r = evaluate_dirs(pred, ref)
    par = [s for s in r.scores if s.organ == "parotid_left"][0]
    assert par.dice == 0.0 and par.hd95_mm == math.inf and par.nsd == 0.0
    assert "1 infinite HD95" in r.table()
    r.to_json(tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text())["cases"]["X"]["parotid_left"]["hd95_mm"] == "inf"


def test_no_names_and_no_pairs(tmp_path):
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    _save(ref / "X.nii.gz", _labels())
    with pytest.raises(InputError, match="No prediction"):
        evaluate_dirs(pred, ref)
    _save(pred / "X.nii.gz", _labels())
    assert "No organ names" in evaluate_dirs(pred, ref).errors["X"]
    with pytest.raises(InputError, match="does not exist"):
        evaluate_dirs(tmp_path / "nope", ref)


def test_score_case_absent_from_both_is_nan():
    s = score_case(np.zeros(SHAPE, np.uint8), _labels(), (1, 1, 1), [("parotid_left", 2, 2)], tolerance_mm=2)[0]
    assert math.isnan(s.dice) and math.isnan(s.hd95_mm) and s.ref_voxels == 0


def test_a_128_cube_case_is_fast(tmp_path):
    import time

    ref = np.zeros((128, 128, 128), np.uint8)
    ref[20:60, 30:90, 40:100] = 1
    ref[70:110, 10:50, 20:60] = 2
    pred = np.roll(ref, 2, axis=0)
    organs = [("brainstem", 1, 1), ("parotid_left", 2, 2)] + [(f"o{i}", i, i) for i in range(3, 8)]
    t = time.perf_counter()
    score_case(pred, ref, (3.9, 3.9, 2.5), organs, tolerance_mm=2.0)
    assert time.perf_counter() - t < 1.0
