"""Refitting a shipped model's settings (`cnn3d_pipeline --model`, `cascade_pipeline --model`): logit offsets fitted
on the training cases of a cache, every variant scored on the validation cases, the best written into a new card
beside a copy of the networks; the shipped files are left alone. On the three bundled OpenKBP cases, one of them
relabelled as a training case."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers.golden import DATA
from organscope.modelcard import MODELS_DIR

pytest.importorskip("torch")  # the pipelines live in the training extra


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from organscope.training.cnn3d_data import build_cache

    root = tmp_path_factory.mktemp("refit")
    data = root / "data"
    shutil.copytree(DATA, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["cases"][0]["split"] = "train"
    (data / "dataset.json").write_text(json.dumps(meta))
    build_cache(data, root / "cache")
    return data, root / "cache", [c["case"] for c in meta["cases"][1:]]


def _contents(paths):
    return {p: p.read_bytes() for p in paths}


def test_cnn3d_refit_fits_offsets_and_keeps_the_best_variant(small_set, tmp_path):
    from organscope.training.cnn3d_pipeline import main

    model = MODELS_DIR / "cnn3d_openkbp.onnx"
    if not model.exists():
        pytest.skip("no shipped cnn3d model")
    data, cache, val_cases = small_set
    before = _contents([model, model.with_suffix(".json")])
    main(["--model", str(model), "--data", str(data), "--cache", str(cache), "--out", str(tmp_path), "--threads", "2"])
    assert _contents(before) == before
    card = json.loads((tmp_path / "cnn3d_openkbp.json").read_text())
    assert (tmp_path / "cnn3d_openkbp.onnx").read_bytes() == before[model]
    v = card["validation"]
    assert v["cases"] == val_cases
    assert len(v["variant_search"]) == 4  # with and without offsets, with and without the largest component
    assert v["mean"]["dice"] == max(v["variant_search"].values())
    assert card["logit_offsets_fit"]["cases"].startswith("every sixth training case (1)")
    off = card["logit_offsets"]
    assert off is None or (len(off) == len(card["network_classes"]) and off[:2] == [0.0, 0.0])


def test_cascade_refit_searches_localisers_offsets_and_mirroring(small_set, tmp_path):
    from organscope.training.cascade_pipeline import heatmap_available, main

    card_path = MODELS_DIR / "cascade_openkbp.json"
    if not card_path.exists():
        pytest.skip("no shipped cascade model")
    data, cache, val_cases = small_set
    shipped = json.loads(card_path.read_text())
    files = [card_path] + [MODELS_DIR / g["file"] for g in shipped["groups"].values()]
    before = _contents(files)
    main(["--model", str(card_path), "--data", str(data), "--cache", str(cache), "--out", str(tmp_path)])
    assert _contents(files) == before
    card = json.loads((tmp_path / "cascade_openkbp.json").read_text())
    search = card["validation"]["settings_search"]
    n_localizers = 2 if heatmap_available() else 1
    assert len(search) == n_localizers * 2 * 2 + 1  # localiser x largest component x offsets, then mirroring
    assert card["validation"]["mean"]["dice"] == max(r["mean_dice"] for r in search.values())
    assert card["validation"]["cases"] == val_cases
    for g, spec in card["groups"].items():
        assert (tmp_path / spec["file"]).read_bytes() == before[MODELS_DIR / spec["file"]]
        assert spec["logit_offsets"] is None or len(spec["logit_offsets"]) == len(spec["network_classes"])
    assert set(card["logit_offsets_fit"]["fitted"]) == set(shipped["groups"])
