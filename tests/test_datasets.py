import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from organscope.datasets import Dataset, partial_label_mask
from organscope.errors import InputError

OPENKBP = Path("/work/shared/data/openkbp")


def _make(root: Path, cases, write=True):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    meta = {"name": "toy", "labels": {"background": 0, "brainstem": 1, "parotid_left": 2, "mandible": 3},
            "cases": cases}
    (root / "dataset.json").write_text(json.dumps(meta))
    if write:
        for c in cases:
            for sub in ("images", "labels"):
                nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.diag([2.0, 1.0, 3.0, 1.0])),
                         root / sub / f"{c['case']}.nii.gz")


def test_partial_labels(tmp_path):
    _make(tmp_path, [{"case": "a", "split": "train", "organs": ["brainstem", "Parotid gland left", "mandible"]},
                     {"case": "b", "split": "train", "organs": ["mandible", "brainstem"]},
                     {"case": "c", "split": "validation"}])
    ds = Dataset(tmp_path)
    a, b, c = ds.cases
    assert ds.splits == ("train", "validation") and [x.case_id for x in ds.split("train")] == ["a", "b"]
    assert a.fully_contoured and a.uncontoured == () and a.known_mask_ids() == (0, 1, 2, 3)
    assert b.organs == ("brainstem", "mandible")  # label order
    assert b.uncontoured == ("parotid_left",) and not b.fully_contoured
    assert b.known_mask_ids() == (1, 3)  # background is not trustworthy in b
    assert c.fully_contoured  # no organs list: all contoured
    labels = np.array([0, 1, 2, 3])
    assert partial_label_mask(labels, a).tolist() == [True, True, True, True]
    assert partial_label_mask(labels, b).tolist() == [False, True, False, True]
    vol = a.load_labels()
    assert vol.shape == (4, 4, 4) and np.allclose(vol.spacing_mm, [2, 1, 3])
    with pytest.raises(InputError, match="no split"):
        ds.split("test")


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="dataset.json"):
        Dataset(tmp_path)
    _make(tmp_path, [{"case": "a"}], write=False)
    with pytest.raises(InputError, match="Case 'a'.*has no file"):
        Dataset(tmp_path)
    assert len(Dataset(tmp_path, require_files=False)) == 1
    with pytest.raises(InputError, match="File not found"):
        Dataset(tmp_path, require_files=False).cases[0].load_image()


def test_unknown_organ_in_case_list(tmp_path):
    _make(tmp_path, [{"case": "a", "organs": ["liver"]}], write=False)
    with pytest.raises(InputError, match="not in its 'labels'"):
        Dataset(tmp_path, require_files=False)


@pytest.mark.skipif(not (OPENKBP / "dataset.json").exists(), reason="shared data not available")
def test_openkbp():
    ds = Dataset(OPENKBP)
    assert len(ds) == 203 and len(ds.split("train")) == 170 and len(ds.split("validation")) == 33
    assert sum(c.fully_contoured for c in ds.split("train")) == 30
    assert dict(ds.label_map.names)[3] == "parotid_right"
    c = ds.case("okbp_train_001")
    assert c.uncontoured == ("esophagus", "larynx") and c.spacing_mm == (3.906, 3.906, 2.5)
