import math

import numpy as np
import pytest

from organscope.errors import InputError
from organscope.metrics import Counts, confusion, dice, jaccard


def test_boxes_with_known_overlap():
    pred = np.zeros((20, 3, 3), bool)
    ref = np.zeros((20, 3, 3), bool)
    pred[2:10] = True  # 8 slabs of 9 voxels
    ref[6:18] = True  # 12 slabs, overlap 4 slabs
    c = confusion(pred, ref)
    assert c == Counts(tp=36, fp=36, fn=72, tn=36)
    assert (c.n_pred, c.n_ref) == (72, 108)
    assert dice(c) == pytest.approx(2 * 4 / (8 + 12))
    assert jaccard(c) == pytest.approx(4 / 16)


def test_identical_and_label_dtypes():
    a = np.zeros((5, 5, 5), np.uint8)
    a[1:3, 1:4, 2] = 7
    c = confusion(a, a.astype(np.float32))
    assert dice(c) == 1.0 and jaccard(c) == 1.0


def test_empty_conventions():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1, 1, 1] = True
    assert math.isnan(dice(confusion(empty, empty))) and math.isnan(jaccard(confusion(empty, empty)))
    assert dice(confusion(full, empty)) == 0.0 and jaccard(confusion(empty, full)) == 0.0


def test_shape_mismatch():
    with pytest.raises(InputError, match="same grid"):
        confusion(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
