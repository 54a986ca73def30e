"""The cascade engine: crop arithmetic, the highest-probability merge, and the whole engine with SYNTHETIC group
networks (helpers/synthetic_cascade: a group's first organ = HU > 300 inside its crop) behind the shipped sparse
localiser on the bundled OpenKBP scan: labels only inside the located groups' crops, an organ cut out of the
scan stays absent, a flipped copy gives the same world map, organ subsets, bad input and bad cards; the shipped
model's label values follow the dataset's organ order, as the other engines'."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic_cascade
from organscope.engines.cascade.engine import N_BACKGROUND, merge_crop, mirror_permutation
from organscope.engines.cascade.groups import crop_window, extract, overlap
from organscope import grid as gridmod
from organscope.engines.registry import get_engine
from organscope.modelcard import MODELS_DIR
from organscope.errors import InputError, ModelError
from organscope.io import load_volume
from organscope.volume import Volume

SCAN = Path(__file__).resolve().parents[1] / "src" / "organscope" / "data" / "okbp_validation_222.nii.gz"
needs_sparse = pytest.mark.skipif(not (MODELS_DIR / "sparse_openkbp.onnx").exists(), reason="no shipped sparse model")


def cascade(model, **kw):
    """The cascade engine as users get it: from the registry, which hands it its organ localisers."""
    return get_engine("cascade", model=model, **kw)


def test_crop_window_is_centred_rounded_to_16_and_at_least_the_training_crop():
    start, size = crop_window([10, 20, 30], [19, 29, 69], min_size=(32, 16, 16), margin=4)
    # box 10 x 10 x 40 + 8 -> 18, 18, 48 -> rounded 32, 32, 48 (axis 0 also the minimum)
    np.testing.assert_array_equal(size, [32, 32, 48])
    centre = start + (size - 1) / 2
    np.testing.assert_allclose(centre, [14.5, 24.5, 49.5], atol=0.5)
    _, size = crop_window([0, 0, 0], [200, 10, 10], min_size=(16, 16, 16), margin=4, limit=(128, 128, 128))
    assert size[0] == 128


def test_extract_repeats_the_edge_and_overlap_maps_back():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    c = extract(a, (-2, 1, 3), (6, 3, 5))
    assert c.shape == (6, 3, 5)
    np.testing.assert_array_equal(c[2:], a[0:4, 1:4, 3:6][:, :, list(range(3)) + [2, 2]])
    np.testing.assert_array_equal(c[0], a[0, 1:4][:, [3, 4, 5, 5, 5]])
    src, dst = overlap(a.shape, (-2, 1, 3), (6, 3, 5))
    np.testing.assert_array_equal(c[dst], a[src])
    assert overlap(a.shape, (10, 0, 0), (4, 4, 4)) == (None, None)


def test_merge_keeps_the_higher_probability_and_skips_members_not_found():
    best = np.zeros((4, 4, 4), np.float32)
    labels = np.zeros((4, 4, 4), np.uint8)
    prob = np.zeros((N_BACKGROUND + 2, 2, 2, 2), np.float32)
    prob[N_BACKGROUND + 0] = 0.6   # member 0 wins the argmax everywhere in this crop
    prob[1] = 0.4
    merge_crop(best, labels, prob, (0, 0, 0), [5, 6])
    assert (labels[:2, :2, :2] == 5).all() and labels.sum() == 5 * 8
    prob2 = np.zeros_like(prob)
    prob2[N_BACKGROUND + 1] = 0.9  # a second group, overlapping one corner voxel with a higher probability
    prob2[0] = 0.1
    merge_crop(best, labels, prob2, (1, 1, 1), [0, 7])
    assert labels[1, 1, 1] == 7 and best[1, 1, 1] == pytest.approx(0.9)
    assert labels[0, 0, 0] == 5 and labels[2, 2, 2] == 7
    prob3 = prob2.copy()
    merge_crop(best, labels, prob3, (2, 2, 2), [0, 0])  # members not found: nothing written
    assert labels[3, 3, 3] == 0


def test_mirror_permutation_swaps_left_and_right_organs_only():
    assert mirror_permutation(["parotid_right", "parotid_left", "mandible"]) == [0, 1, 3, 2, 4]
    assert mirror_permutation(["brainstem", "spinal_cord"]) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_cascade.write_model(tmp_path_factory.mktemp("cascade"))


@pytest.fixture(scope="module")
def scan():
    return load_volume(SCAN)


@pytest.fixture(scope="module")
def result(synthetic, scan):
    eng = cascade(synthetic, threads=1)
    return eng, eng.segment(scan)


@needs_sparse
def test_labels_are_bone_inside_the_located_group_crops_only(result, scan):
    eng, seg = result
    hu, gmap = eng.work_grid(scan)
    crops = eng.group_boxes(eng.locate(scan, hu, gmap), gmap, eng.classes[1:])
    assert set(crops) == {"midline", "face", "neck"}
    inside = np.zeros(eng.grid, bool)
    for found, start, size in crops.values():
        src, _ = overlap(eng.grid, start, size)
        inside[src] = True
    # what the engine should give on the grid: group first organs where bone, inside their crops
    lab_grid = gridmod.to_grid(seg.labels, eng.grid)[0]
    assert set(np.unique(seg.labels.array)) <= {0, eng.class_id["brainstem"], eng.class_id["parotid_right"],
                                               eng.class_id["larynx"]}
    assert (seg.labels.array > 0).sum() > 100
    assert not (lab_grid[~inside] > 0.5).any()
    assert seg.labels.shape == scan.shape and np.allclose(seg.labels.affine, scan.affine)
    assert (hu[lab_grid > 0.5] > 250).mean() > 0.95


@needs_sparse
def test_an_organ_cut_out_of_the_scan_stays_absent(synthetic, scan, result):
    eng, _ = result
    hu, gmap = eng.work_grid(scan)
    larynx = eng.locate(scan, hu, gmap)["larynx"]
    low = larynx.box_voxels[1][2] + 5  # OpenKBP axis 2 runs superior -> inferior: keep what lies below the larynx
    cut = Volume(np.ascontiguousarray(scan.array[:, :, low:]),
                 scan.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, low], [0, 0, 0, 1.0]]))
    seg = cascade(synthetic, threads=1).segment(cut)
    for organ in ("brainstem", "parotid_right"):
        assert not (seg.labels.array == eng.class_id[organ]).any(), organ


@needs_sparse
def test_a_flipped_copy_gives_the_same_world_map(synthetic, scan, result):
    _, seg = result
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = scan.shape[0] - 1
    flipped = Volume(np.ascontiguousarray(scan.array[::-1]), scan.affine @ flip)
    seg2 = cascade(synthetic, threads=1).segment(flipped)
    np.testing.assert_array_equal(seg2.labels.array[::-1], seg.labels.array)


def test_mirror_tta_averages_with_the_mirrored_run_and_swaps_left_and_right(tmp_path, synthetic, rng):
    """The synthetic networks are pointwise: mirroring the crop changes nothing for the midline group, and in the
    face group it moves parotid_right's probability (the bone rule) onto parotid_left, so the two get its mean."""
    plain = cascade(synthetic, threads=1)
    mirrored = cascade(synthetic_cascade.write_model(tmp_path, mirror_tta=True), threads=1)
    x = rng.random((2, 16, 16, 32), dtype=np.float32)
    np.testing.assert_allclose(mirrored.group_probabilities("midline", x), plain.group_probabilities("midline", x),
                               atol=1e-6)
    p, q = plain.group_probabilities("face", x), mirrored.group_probabilities("face", x)
    np.testing.assert_allclose(q[2], q[3], atol=1e-6)
    np.testing.assert_allclose(q[2], 0.5 * (p[2] + p[3]), atol=1e-6)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


@needs_sparse
def test_an_organ_subset_runs_only_its_groups(synthetic, scan):
    seg = cascade(synthetic, threads=1).segment(scan, organs=["brainstem"])
    assert set(seg.names.values()) == {"brainstem"}
    assert set(np.unique(seg.labels.array)) == {0, 1}
    assert set(seg.timings_s) >= {"group_midline"} and "group_face" not in seg.timings_s


def test_bad_input_and_bad_cards_are_clear_errors(synthetic, tmp_path, scan):
    eng = cascade(synthetic, threads=1)
    bad = Volume(np.full((20, 20, 20), np.nan, np.float32), np.eye(4))
    with pytest.raises(InputError, match="NaN"):
        eng.segment(bad)
    with pytest.raises(InputError, match="no organ"):
        eng.segment(scan, organs=["liver"])
    with pytest.raises(ModelError, match="not found"):
        cascade(tmp_path / "nothing.json")
    card = json.loads(synthetic.read_text())
    (tmp_path / "broken.json").write_text(json.dumps({k: v for k, v in card.items() if k != "groups"}))
    with pytest.raises(ModelError, match="broken.json lacks the field 'groups'"):
        cascade(tmp_path / "broken.json")
    with pytest.raises(ModelError, match="localiser"):
        cascade(synthetic, localizer="guess")
    (tmp_path / "classes.json").write_text(json.dumps(dict(card, classes=["background", "brainstem", "liver"])))
    with pytest.raises(ModelError, match="classes"):
        cascade(tmp_path / "classes.json")


def test_shipped_model_labels_organs_like_the_other_engines():
    from organscope.engines.cnn3d.engine import DEFAULT_MODEL as CNN3D_MODEL
    from organscope.modelcard import MODELS_DIR as DIR

    if not (DIR / "cascade_openkbp.json").exists() or not (DIR / f"{CNN3D_MODEL}.json").exists():
        pytest.skip("no shipped cascade or cnn3d model")
    cascade = json.loads((DIR / "cascade_openkbp.json").read_text())["classes"]
    cnn3d = json.loads((DIR / f"{CNN3D_MODEL}.json").read_text())["classes"]
    assert cascade == cnn3d
