"""Golden tests of the shipped cnn3d, slice2d and cascade models, and of the ensemble of the shipped members: they
still reach their recorded Dice on the three bundled OpenKBP validation cases (tests/data/openkbp/golden_<engine>.json, written by tests/make_golden.py
when the model shipped); a drop beyond the tolerance fails."""
import json

import pytest

from helpers.golden import DATA, engine_dice
from organscope.engines.registry import ENGINES

TOLERANCE = 0.02
MODELS = {"cnn3d": ("cnn3d_openkbp.onnx",), "slice2d": ("slice2d_openkbp.json",), "cascade": ("cascade_openkbp.json",),
          "ensemble": ("sparse_openkbp.onnx", "cnn3d_openkbp.onnx")}


@pytest.mark.parametrize("engine", sorted(MODELS))
def test_shipped_model_reaches_recorded_accuracy(engine):
    from organscope.modelcard import MODELS_DIR

    golden_path = DATA / f"golden_{engine}.json"
    if engine not in ENGINES or not all((MODELS_DIR / m).exists() for m in MODELS[engine]) or not golden_path.exists():
        pytest.skip(f"no shipped {engine} model or golden file")
    golden = json.loads(golden_path.read_text())
    res = engine_dice(engine)
    assert res["mean_dice"] >= golden["mean_dice"] - TOLERANCE, res
    for organ, d in golden["dice"].items():
        assert res["dice"][organ] >= d - 0.05, (organ, res["dice"][organ], d)
