"""Golden test: the shipped sparse model still reaches its recorded accuracy on three OpenKBP validation cases
(tests/data/openkbp, copied with their MIT licence). The recorded figures in golden_sparse.json were measured
with `python tests/make_golden.py` when the model was shipped; a drop beyond the tolerance fails. The model shipped
on 2026-12-03 trained on every OpenKBP case, these three included: the figures guard the engine, the export and
the card's settings against regressions; its accuracy on unseen patients is the card's out-of-fold figure."""
import json
from pathlib import Path

import pytest

from organscope.datasets import Dataset
from organscope.modelcard import MODELS_DIR

DATA = Path(__file__).parent / "data" / "openkbp"
GOLDEN = DATA / "golden_sparse.json"
TOLERANCE = 0.02

pytestmark = pytest.mark.skipif(not (MODELS_DIR / "sparse_openkbp.onnx").exists(), reason="no shipped model")


def test_shipped_model_reaches_recorded_accuracy():
    from organscope.engines.sparse import SparseEngine
    from organscope.training.sparse_validation import validate

    golden = json.loads(GOLDEN.read_text())
    engine = SparseEngine(threads=2)
    res = validate(engine, Dataset(DATA).split("validation"), n_points=golden["points_per_case"], seed=0,
                   progress=False)
    assert res.mean_dice >= golden["mean_dice"] - TOLERANCE, res.to_dict()
    assert res.point_accuracy >= golden["point_accuracy"] - TOLERANCE, res.to_dict()
    for organ, d in golden["dice"].items():
        assert res.dice[organ] >= d - 0.05, (organ, res.dice[organ], d)


def test_model_card_is_complete():
    card = json.loads((MODELS_DIR / "sparse_openkbp.json").read_text())
    for key in ("classes", "pattern", "training", "validation", "date", "logit_bias", "segmentation"):
        assert key in card
    assert len(card["training"]["cases"]) == 203  # every OpenKBP case, after cross-validation chose the settings
    assert card["validation"]["cases"] == 203 and len(card["validation"]["folds"]) == 5  # out of fold
    assert card["validation"]["mean_dice"] > 0
    assert len(card["logit_bias"]) == len(card["classes"])
