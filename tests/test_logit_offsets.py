"""Per-class logit offsets: fitted on cases where the network over-segments an organ by a known margin, they
undo it; the cnn3d and cascade engines apply the card's offsets before the argmax / softmax and refuse
malformed ones. (SYNTHETIC logits and networks throughout.)"""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import synthetic_cascade
from helpers import synthetic_cnn3d as syn3
from organscope.errors import ModelError
from organscope.training.logit_offsets import fit_offsets


def _ball_case(rng, radius: float, overshoot: float):
    """Logits air -5, body 0, organ = radius + overshoot - distance: the organ's argmax is a ball `overshoot`
    voxels too wide; the target is the ball of `radius`."""
    shape = (24, 24, 24)
    centre = rng.uniform(9, 15, 3)
    d = np.linalg.norm(np.indices(shape).transpose(1, 2, 3, 0) - centre, axis=-1)
    logits = np.stack([np.full(shape, -5.0), np.zeros(shape), radius + overshoot - d]).astype(np.float16)
    target = np.where(d <= radius, 2, 1)
    return logits, target, np.array([True])


def test_fitted_offset_undoes_a_known_over_segmentation(rng):
    samples = [_ball_case(rng, 5.0, 2.0) for _ in range(4)]
    off = fit_offsets(samples, n_special=2, log=lambda m: None)
    assert off[0] == 0 and off[1] == 0
    assert off[2] == pytest.approx(-2.0, abs=0.26)
    # a case where the organ is not contoured is not scored: its (wrong) logits change nothing
    wrong = _ball_case(rng, 5.0, -3.0)
    off2 = fit_offsets(samples + [(wrong[0], wrong[1], np.array([False]))], n_special=2, log=lambda m: None)
    assert off2[2] == off[2]


def test_an_organ_the_network_never_predicts_keeps_offset_zero(rng):
    """Every candidate scores Dice 0 when the organ's logit is far below the others everywhere (a network that
    never learned it): the tie keeps no offset instead of the first candidate (-4)."""
    logits, target, contoured = _ball_case(rng, 5.0, 2.0)
    logits[2] = -50.0
    off = fit_offsets([(logits, target, contoured)], n_special=2, log=lambda m: None)
    assert off[2] == 0.0


def test_cnn3d_engine_applies_the_card_offsets(tmp_path, phantoms):
    pytest.importorskip("onnx")
    from organscope.engines.cnn3d import Cnn3dEngine

    path = syn3.write_model(tmp_path, (32, 32, 32))
    card = json.loads(path.with_suffix(".json").read_text())
    vol = phantoms["RAS"]
    plain = (Cnn3dEngine(path, threads=1).segment(vol).labels.array == 1).sum()
    # the synthetic bone logit beats body where w1 > 0.5; +10 moves that to w1 > 0 (all body), -10 to never
    path.with_suffix(".json").write_text(json.dumps(dict(card, logit_offsets=[0, 0, 10])))
    grown = (Cnn3dEngine(path, threads=1).segment(vol).labels.array == 1).sum()
    path.with_suffix(".json").write_text(json.dumps(dict(card, logit_offsets=[0, 0, -10])))
    gone = (Cnn3dEngine(path, threads=1).segment(vol).labels.array == 1).sum()
    assert 0 == gone < plain < grown
    for bad in ([0, 0], [0, 0, "x"], [0, 0, float("nan")]):
        path.with_suffix(".json").write_text(json.dumps(dict(card, logit_offsets=bad)))
        with pytest.raises(ModelError, match="logit_offsets"):
            Cnn3dEngine(path, threads=1)


def test_cascade_engine_applies_each_groups_offsets_before_the_softmax(tmp_path, rng):
    pytest.importorskip("onnx")
    from organscope.engines.cascade import CascadeEngine

    path = synthetic_cascade.write_model(tmp_path)
    card = json.loads(path.read_text())
    x = rng.random((2, 16, 16, 16), dtype=np.float32)
    plain = CascadeEngine(path, threads=1).group_probabilities("midline", x)
    card["groups"]["midline"]["logit_offsets"] = [0, 0, -1.5, 0]
    path.write_text(json.dumps(card))
    shifted = CascadeEngine(path, threads=1).group_probabilities("midline", x)
    # softmax(l + o): each class's probability is rescaled by exp(o) and renormalised
    expect = plain * np.exp(np.array([0, 0, -1.5, 0]))[:, None, None, None]
    np.testing.assert_allclose(shifted, expect / expect.sum(0), rtol=1e-4, atol=1e-6)
    card["groups"]["midline"]["logit_offsets"] = [0, 0, -1.5]
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="midline"):
        CascadeEngine(path, threads=1)
