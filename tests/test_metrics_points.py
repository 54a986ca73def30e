import math

import pytest

from organscope.metrics import macro_f1, per_class_f1, point_accuracy

REF = [0, 0, 0, 1, 1, 2, 2, 2, -1, -1]  # the last two points are unknown
PRED = [0, 1, 0, 1, 1, 2, 0, 1, 2, 0]


def test_accuracy_ignores_unknown_points():
    assert point_accuracy(PRED, REF) == pytest.approx(5 / 8)
    assert math.isnan(point_accuracy([1, 2], [-1, -1]))


def test_macro_f1_hand_computed():
    # class 0: tp 2 fp 1 fn 1 -> 2/3; class 1: tp 2 fp 2 fn 0 -> 2/3; class 2: tp 1 fp 0 fn 2 -> 1/2
    f1 = per_class_f1(PRED, REF)
    assert f1 == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 1 / 2})
    assert macro_f1(PRED, REF) == pytest.approx(11 / 18)
    # a listed class absent from both is not scored; one present only in the prediction scores 0
    assert macro_f1(PRED, REF, labels=[0, 1, 2, 3]) == pytest.approx(11 / 18)
    assert macro_f1([0, 3], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def test_shapes_must_pair():
    from organscope.errors import InputError

    with pytest.raises(InputError):
        point_accuracy([1, 2, 3], [1, 2])
