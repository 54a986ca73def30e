"""Typed model cards: every shipped card reads through its engine's card class; a missing or malformed field is
one sentence naming the card file and the field; cards are frozen and reading one never changes it; the card's
CT windows drive the network input."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic_cascade
from helpers import synthetic_cnn3d as syn3
from organscope.engines.cascade.card import CascadeCard, GroupSpec
from organscope.engines.cnn3d.card import Cnn3dCard
from organscope.engines.registry import CARD_KINDS, card_class, load_card
from organscope.engines.slice2d.card import Slice2dCard
from organscope.engines.sparse.card import SegmentSettings, SparseCard
from organscope.errors import ModelError
from organscope.localize.heatmap_card import HeatmapCard
from organscope.modelcard import MODELS_DIR

SHIPPED = sorted(MODELS_DIR.glob("*.json"))
CLASSES = {"sparse": SparseCard, "cnn3d": Cnn3dCard, "cascade": CascadeCard, "slice2d": Slice2dCard,
           "locate": HeatmapCard}


def shipped(engine: str) -> dict:
    for p in SHIPPED:
        data = json.loads(p.read_text())
        if data.get("engine") == engine:
            return data
    pytest.skip(f"no shipped {engine} card")


def one_sentence_error(exc: pytest.ExceptionInfo, name: str, field: str) -> str:
    msg = str(exc.value)
    assert msg.startswith(f"Model card {name}"), msg
    assert f"'{field}'" in msg, msg
    assert msg.endswith(".") and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_card_loads_through_its_typed_class(path):
    card = load_card(path)
    engine = json.loads(path.read_text())["engine"]
    assert type(card) is CLASSES[engine] is card_class(engine)
    assert card.path == path and card.engine == engine and card.date
    assert len(card.organ_names) == 7  # the OpenKBP organs
    assert set(CLASSES) == set(CARD_KINDS)


def test_shipped_cards_give_the_values_the_engines_used():
    sparse = SparseCard.from_dict(shipped("sparse"), "s.json")
    assert sparse.segmentation == SegmentSettings(majority=0)
    assert sparse.make_pattern().size == sparse.n_inputs == 6561
    cascade = CascadeCard.from_dict(shipped("cascade"), "c.json")
    assert [g.name for g in cascade.groups] == ["midline", "face", "neck"]
    assert cascade.group("face").crop == (64, 48, 48) and cascade.group("face").offsets_array().shape == (5, 1, 1, 1)
    assert cascade.localizer == "heatmap" and cascade.largest_component is False
    slice2d = Slice2dCard.from_dict(shipped("slice2d"), "s2.json")
    assert slice2d.organ("larynx").window_hu == (-600.0, 400.0) and slice2d.input_size == (128, 96)
    heat = HeatmapCard.from_dict(shipped("locate"), "h.json")
    assert heat.network_grid == (128, 128, 128) and heat.tau == 0.4
    assert dict(heat.box_half_extent_mm)["brainstem"] == (21.5, 18.0, 44.7)


def _without(data: dict, *keys: str) -> dict:
    data = copy.deepcopy(data)
    *path, last = keys
    node = data
    for k in path:
        node = node[k]
    del node[last]
    return data


def _with(data: dict, value, *keys: str) -> dict:
    data = copy.deepcopy(data)
    *path, last = keys
    node = data
    for k in path:
        node = node[k]
    node[last] = value
    return data


MISSING = [
    ("cnn3d", ("classes",), "classes"),
    ("sparse", ("pattern",), "pattern"),
    ("sparse", ("pattern", "grid_steps_mm"), "pattern.grid_steps_mm"),
    ("cascade", ("grid",), "grid"),
    ("cascade", ("groups", "neck", "file"), "groups.neck.file"),
    ("slice2d", ("input_size",), "input_size"),
    ("slice2d", ("organs", "mandible", "window_hu"), "organs.mandible.window_hu"),
    ("locate", ("organs",), "organs"),
]


@pytest.mark.parametrize("engine, keys, field", MISSING, ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_a_missing_required_field_is_named(engine, keys, field):
    with pytest.raises(ModelError) as exc:
        CLASSES[engine].from_dict(_without(shipped(engine), *keys), "x.json")
    assert "lacks the field" in one_sentence_error(exc, "x.json", field)


WRONG = [
    ("cnn3d", ("grid",), [1, 2], "grid", "3 positive integers"),
    ("cnn3d", ("grid",), "128", "grid", "3 positive integers"),
    ("cnn3d", ("grid",), [128, 128, 0], "grid", "3 positive integers"),
    ("cnn3d", ("windows_hu",), [[40, 0]], "windows_hu", "positive widths"),
    ("cnn3d", ("windows_hu",), "wide", "windows_hu", "level, width"),
    ("cnn3d", ("logit_offsets",), [0, 0, 1], "logit_offsets", "9 numbers"),
    ("cnn3d", ("logit_offsets",), [0, 0, "x", 0, 0, 0, 0, 0, 0], "logit_offsets", "finite numbers"),
    ("cnn3d", ("largest_component",), "yes", "largest_component", "true or false"),
    ("sparse", ("classes",), "background", "classes", "list of names"),
    ("sparse", ("n_inputs",), 6000, "pattern", "6561"),
    ("sparse", ("logit_bias",), [0.0, 1.0], "logit_bias", "8 numbers"),
    ("sparse", ("segmentation", "sweeps"), 3, "segmentation", "unknown keys ['sweeps']"),
    ("sparse", ("segmentation", "majority"), "x", "segmentation.majority", "0 (off) to 27"),
    ("sparse", ("segmentation", "levels_mm"), 8, "segmentation.levels_mm", "finite numbers"),
    ("cascade", ("grid",), [1, 2], "grid", "3 positive integers"),
    ("cascade", ("windows_hu",), [[40, 400], [300, 0]], "windows_hu", "positive widths"),
    ("cascade", ("groups", "midline", "logit_offsets"), [0, 0, -1.5], "groups.midline.logit_offsets",
     "4 numbers, one per network class"),
    ("cascade", ("groups", "face", "crop"), [1, 2], "groups.face.crop", "3 positive integers"),
    ("cascade", ("groups", "neck", "organs"), "larynx", "groups.neck.organs", "list of names"),
    ("cascade", ("groups",), ["midline"], "groups", "JSON object"),
    ("cascade", ("localizer",), "guess", "localizer", "sparse_grid, heatmap"),
    ("cascade", ("classes",), ["background", "brainstem", "liver"], "classes", "groups' organs"),
    ("slice2d", ("organs", "larynx", "window_hu"), [400, -600], "organs.larynx.window_hu", "high above low"),
    ("slice2d", ("organs", "larynx"), "larynx.onnx", "organs.larynx", "JSON object"),
    ("slice2d", ("slice_range",), "all", "slice_range", "sparse, body"),
    ("locate", ("grid",), [64, 64], "grid", "3 positive integers"),
    ("locate", ("tau",), "0.4", "tau", "finite number"),
    ("locate", ("box_half_extent_mm", "brainstem"), [1.0, 2.0], "box_half_extent_mm.brainstem", "3 positive"),
    ("sparse", ("qc_min_confidence",), 1.5, "qc_min_confidence", "between 0 and 1"),
    ("cnn3d", ("qc_min_confidence",), "high", "qc_min_confidence", "between 0 and 1"),
]


@pytest.mark.parametrize("engine, keys, value, field, why", WRONG,
                         ids=lambda v: ".".join(v) if isinstance(v, tuple) else str(v)[:20])
def test_a_wrong_form_is_one_sentence_naming_the_field(engine, keys, value, field, why):
    with pytest.raises(ModelError) as exc:
        CLASSES[engine].from_dict(_with(shipped(engine), value, *keys), "x.json")
    assert why in one_sentence_error(exc, "x.json", field)


def test_a_card_for_no_known_engine_names_the_engine_field(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"engine": "guess", "classes": ["background"]}))
    with pytest.raises(ModelError) as exc:
        load_card(path)
    one_sentence_error(exc, "odd.json", "engine")
    path.write_text("{not json")
    with pytest.raises(ModelError, match="odd.json cannot be read as JSON"):
        load_card(path)


def test_cards_are_frozen():
    cnn3d = Cnn3dCard.from_dict(shipped("cnn3d"), "c.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cnn3d.grid = (64, 64, 64)
    with pytest.raises(TypeError):
        cnn3d.raw["grid"] = [64, 64, 64]  # the whole document is read-only too
    sparse = SparseCard.from_dict(shipped("sparse"), "s.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sparse.segmentation.majority = 20
    slice2d = Slice2dCard.from_dict(shipped("slice2d"), "s2.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        slice2d.organs[0].window_hu = (0.0, 1.0)


def test_cascade_groups_are_immutable_and_reading_twice_changes_nothing(tmp_path):
    path = tmp_path / "cascade.json"
    data = shipped("cascade")
    path.write_text(json.dumps(data))
    before = path.read_text()
    first, second = CascadeCard.load(path), CascadeCard.load(path)
    assert first == second and path.read_text() == before
    assert isinstance(first.groups, tuple) and all(isinstance(g, GroupSpec) for g in first.groups)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.groups[0].crop = (1, 1, 1)
    with pytest.raises(TypeError):
        first.groups[0] = first.groups[1]
    # parsing leaves the JSON object as it was (the engine used to rewrite each group's crop in it)
    kept = copy.deepcopy(data)
    CascadeCard.from_dict(data, path)
    assert data == kept


def test_the_cascade_engine_reads_its_card_without_changing_it(tmp_path):
    pytest.importorskip("onnx")
    from organscope.engines.cascade import CascadeEngine

    path = synthetic_cascade.write_model(tmp_path)
    before = path.read_text()
    a, b = CascadeEngine(path, threads=1), CascadeEngine(path, threads=1)
    assert a.card == b.card and path.read_text() == before
    assert a.groups["midline"].crop == (16, 16, 16) and a.windows_hu == a.card.windows_hu
    with pytest.raises(TypeError):
        a.groups["midline"] = a.groups["face"]


def test_the_cards_windows_drive_the_network_input(tmp_path, phantoms):
    pytest.importorskip("onnx")
    from organscope.engines.cnn3d import Cnn3dEngine
    from organscope.intensity import windows

    soft = syn3.write_model(tmp_path / "soft", (32, 32, 32))
    bone = syn3.write_model(tmp_path / "bone", (32, 32, 32))
    card = json.loads(bone.with_suffix(".json").read_text())
    bone.with_suffix(".json").write_text(json.dumps(dict(card, windows_hu=[[300.0, 2000.0], [-600.0, 1000.0]])))
    vol = phantoms["LPS"]
    x_soft, gmap = Cnn3dEngine(soft, threads=1).network_input(vol)
    x_bone, _ = Cnn3dEngine(bone, threads=1).network_input(vol)
    assert x_soft.shape == x_bone.shape == (1, 2, 32, 32, 32)
    assert not np.allclose(x_soft, x_bone)
    # the bone card's first channel is the default card's second window, its second a lung window
    np.testing.assert_array_equal(x_bone[0, 0], x_soft[0, 1])
    from organscope import grid as gridmod

    hu, _ = gridmod.to_grid(vol, (32, 32, 32))
    np.testing.assert_array_equal(x_bone[0], windows(hu, ((300.0, 2000.0), (-600.0, 1000.0))))


def test_a_trainers_sparse_card_dict_is_validated_like_a_card_file(tmp_path, synthetic_model_path):
    import shutil

    from organscope.engines.sparse import SparseModel

    onnx_path = tmp_path / "m.onnx"
    shutil.copy(synthetic_model_path, onnx_path)
    card = json.loads(synthetic_model_path.with_suffix(".json").read_text())
    model = SparseModel(onnx_path, card, threads=1)
    assert isinstance(model.card, SparseCard) and model.classes == tuple(card["classes"])
    with pytest.raises(ModelError, match=re.escape("Model card m.json: field 'segmentation' holds unknown keys")):
        SparseModel(onnx_path, dict(card, segmentation={"levels": [8]}), threads=1)
    assert Path(model.card.path).name == "m.json"
