"""The sparse engine and its model wrapper, driven by the SYNTHETIC analytic test model."""
import json
import shutil

import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.engines.sparse import SparseEngine, SparseModel
from organscope.engines.sparse.engine import SegmentSettings
from organscope.errors import ModelError
from organscope.volume import Volume


@pytest.fixture(scope="module")
def model(synthetic_model_path):
    return SparseModel.load(synthetic_model_path, threads=1)


def test_model_card_and_pattern(model):
    assert model.classes == syn.CLASSES
    assert model.pattern.size == 6561
    np.testing.assert_array_equal(model.logit_bias, syn.LOGIT_BIAS)


def test_logits_match_the_numpy_reference(model, rng):
    pat = model.pattern
    centre = np.flatnonzero(np.all(pat.offsets_mm == 0, axis=1))
    up = np.flatnonzero(np.all(pat.offsets_mm == [0, 0, syn.UP_MM], axis=1))
    hu_c = rng.integers(-1000, 1000, 64)
    hu_u = rng.integers(-1000, 1000, 64)
    d = np.clip(rng.normal(0, 2, (64, pat.size)), -4, 4).astype(np.float32)  # noise elsewhere is ignored
    d[:, centre] = np.clip(hu_c / 128, -4, 4)[:, None]
    d[:, up] = np.clip(hu_u / 128, -4, 4)[:, None]
    np.testing.assert_allclose(model.logits(d), syn.analytic_logits(hu_c, hu_u), atol=1e-3)
    p = model.predict(d)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(1), syn.analytic_logits(hu_c, hu_u).argmax(1))


def test_model_errors(tmp_path, synthetic_model_path):
    with pytest.raises(ModelError, match="not found"):
        SparseModel.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="not found"):
        SparseModel.load("no_such_shipped_model")
    # an .onnx without its card
    lone = tmp_path / "lone.onnx"
    shutil.copy(synthetic_model_path, lone)
    with pytest.raises(ModelError, match="lone.json"):
        SparseModel.load(lone)
    # a corrupt .onnx with a card
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not onnx")
    shutil.copy(synthetic_model_path.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ModelError, match="Could not load"):
        SparseModel.load(bad)
    # a card whose pattern does not match the network's input size
    odd = tmp_path / "odd.onnx"
    shutil.copy(synthetic_model_path, odd)
    card = json.loads(synthetic_model_path.with_suffix(".json").read_text())
    card["n_inputs"] = 6000
    odd.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="6561"):
        SparseModel.load(odd)


def test_settings_come_from_the_card(synthetic_engine):
    assert synthetic_engine.settings == SegmentSettings(levels_mm=(8.0, 4.0, 2.0), majority=20, batch=4096)
    assert synthetic_engine.classes == syn.CLASSES
    assert synthetic_engine.name == "sparse"


def test_prepare_makes_canonical_int16(synthetic_engine, phantoms):
    prep = synthetic_engine.prepare(phantoms["PLI"])
    assert prep.canonical.array.dtype == np.int16
    assert prep.canonical.axcodes == ("R", "A", "S")
    np.testing.assert_array_equal(prep.canonical.array, phantoms["RAS"].array)
    assert prep.offsets_vox.shape == (6561, 3)
    assert prep.body.dtype == bool and prep.body.shape == phantoms["RAS"].shape
    assert prep.body[tuple(np.rint(prep.canonical.world_to_voxel(syn.CENTER_MM)[0]).astype(int))]


def test_classify_voxels_is_batch_independent(synthetic_engine, phantoms):
    prep = synthetic_engine.prepare(phantoms["RAS"])
    vox = np.argwhere(prep.body)[::97][:300]
    a = synthetic_engine.classify_voxels(prep, vox)
    b = synthetic_engine.classify_voxels(prep, vox, batch=7)
    np.testing.assert_array_equal(a, b)
    assert synthetic_engine.classify_voxels(prep, np.empty((0, 3), int)).shape == (0, 4)


def test_query_accepts_prepared_scan_and_float_volumes(synthetic_engine, phantoms):
    vol = phantoms["LPS"]
    pts = [syn.BONE_SPHERE.center_mm, syn.FAT_SPHERE.center_mm]
    r1 = synthetic_engine.query(synthetic_engine.prepare(vol), pts)
    r2 = synthetic_engine.query(Volume(vol.array.astype(np.float32), vol.affine), pts)
    assert r1.names == r2.names == ("bone", "fat")
    np.testing.assert_array_equal(r1.probabilities, r2.probabilities)


def test_segment_reports_progress_and_timings(synthetic_engine, phantoms):
    calls = []
    seg = synthetic_engine.segment(phantoms["oblique"], progress=lambda s, f: calls.append((s, f)))
    assert calls[0][1] == 0.0 and calls[-1] == ("done", 1.0)
    assert all(0 <= f <= 1 for _, f in calls)
    assert [f for _, f in calls] == sorted(f for _, f in calls)
    for key in ("prepare", "level_1", "level_2", "level_3", "components", "total", "points_classified"):
        assert key in seg.timings_s


def test_segment_without_body_gives_background(synthetic_engine):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = synthetic_engine.segment(Volume(np.full((16, 16, 16), -1000, np.int16), aff))
    assert not seg.labels.array.any()
    assert seg.timings_s["points_classified"] == 0


def test_segment_settings_without_smoothing_or_components(synthetic_model_path, phantoms, segmentations):
    eng = SparseEngine(model=SparseModel.load(synthetic_model_path, threads=1),
                       settings=SegmentSettings(majority=0, largest_component=False))
    seg = eng.segment(phantoms["RAS"])
    # on this clean phantom neither step changes anything
    np.testing.assert_array_equal(seg.labels.array, segmentations["RAS"].labels.array)


def test_api_with_a_model_path(synthetic_model_path, phantoms, phantom_files):
    import organscope as osc

    res = osc.query(phantom_files["PLI"], [syn.BONE_SPHERE.center_mm], model=str(synthetic_model_path), threads=1)
    assert res.names == ("bone",)
    eng = osc.engine(model=str(synthetic_model_path), threads=1)
    assert eng is osc.engine(model=str(synthetic_model_path), threads=1)  # cached
    res2 = osc.query(eng.prepare(phantoms["PLI"]), [syn.FAT_SPHERE.center_mm], model=str(synthetic_model_path),
                     threads=1)
    assert res2.names == ("fat",)


def test_body_mask_fills_holes_across_the_superior_axis():
    from organscope.sampling.points import body_mask, superior_axis

    ring = np.full((12, 12, 12), -1000, np.int16)
    ring[2:10, 2:10, :] = 0
    ring[4:8, 4:8, :] = -1000          # a tube along axis 2 (an airway): open at both ends, so not a 3D hole
    assert body_mask(ring, slice_axis=2)[5, 5, 5]      # axial slices across the tube: filled
    assert not body_mask(ring, slice_axis=0)[5, 5, 5]  # slices along the tube: the hole is not enclosed
    pli = np.array([[0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1]])
    assert superior_axis(pli) == 2 and superior_axis(pli[:, [2, 0, 1, 3]]) == 0


@pytest.mark.parametrize("slice_axis", [None, 0, 1, 2])
def test_fill_holes_matches_scipy(rng, slice_axis):
    from scipy import ndimage

    from organscope.sampling.points import fill_holes

    for density in (0.3, 0.5, 0.7):
        mask = ndimage.binary_opening(rng.random((17, 13, 11)) < density)
        if slice_axis is None:
            expected = ndimage.binary_fill_holes(mask)
        else:
            expected = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, slice_axis, 0)])
            expected = np.moveaxis(expected, 0, slice_axis)
        np.testing.assert_array_equal(fill_holes(mask, slice_axis=slice_axis), expected)
    assert fill_holes(np.ones((3, 4, 5), bool)).all() and not fill_holes(np.zeros((3, 4, 5), bool)).any()


def test_body_mask_is_computed_on_a_coarse_grid_for_fine_scans(synthetic_engine, phantoms):
    from organscope.sampling.points import body_steps

    assert body_steps((4.688, 4.688, 3.0)) == (1, 1, 1)   # OpenKBP: full resolution, results unchanged
    assert body_steps((0.8, 0.8, 1.5)) == (5, 5, 2)
    prep = synthetic_engine.prepare(phantoms["RAS"])       # 0.8 x 1.3 x 2.5 mm
    assert prep.body_step == (5, 3, 1)
    assert prep.body_coarse.shape == tuple(-(-n // s) for n, s in zip(prep.canonical.shape, prep.body_step))
    assert prep.body.shape == prep.canonical.shape


def test_small_queries_use_a_single_thread_session_with_the_same_results(synthetic_model_path, phantoms):
    from organscope.engines.sparse.engine import SMALL_BATCH

    eng = SparseEngine(model=SparseModel.load(synthetic_model_path, threads=2))
    prep = eng.prepare(phantoms["PLI"])
    vox = np.argwhere(prep.body)[:: 50][:SMALL_BATCH + 3]
    many = eng.classify_voxels(prep, vox)
    assert eng._one_thread is None
    one = np.vstack([eng.classify_voxels(prep, v[None]) for v in vox[:5]])
    assert eng._one_thread is not None and eng._one_thread.threads == 1
    np.testing.assert_allclose(one, many[:5], rtol=1e-6, atol=1e-7)
