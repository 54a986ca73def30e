"""The Engine protocol's probabilities and confidence, for every engine with its SYNTHETIC test model (sparse,
cnn3d and slice2d on the analytic phantoms in RAS, LPS, PLI and oblique grids; the cascade on the bundled scan,
where its localiser finds organs): with probabilities=True the class probabilities sum to 1 on the engine's
working grid, their argmax on the scan's grid agrees with the label map on at least AGREE of the voxels, a
flipped copy gives the same world map; per-organ confidence is in (0, 1] for every organ present and absent for
the others; an organ subset is honoured by the probabilities too; without probabilities nothing is kept."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic_cascade, synthetic_cnn3d, synthetic_slice2d
from organscope.engines.registry import get_engine
from organscope.modelcard import MODELS_DIR
from organscope.segmentation import ClassProbabilities, Segmentation
from organscope.volume import Volume

AGREE = 0.95  # fraction of voxels where argmax(probabilities on the scan's grid) is the label map's organ
SCAN = Path(__file__).resolve().parents[1] / "src" / "organscope" / "data" / "okbp_validation_222.nii.gz"
needs_sparse = pytest.mark.skipif(not (MODELS_DIR / "sparse_openkbp.onnx").exists(),
                                  reason="no shipped sparse model (the localiser of slice2d and the cascade)")
PHANTOMS = ("RAS", "LPS", "PLI", "oblique")


@pytest.fixture(scope="module")
def engines(tmp_path_factory, synthetic_model_path):
    """name -> engine with its synthetic model; composite engines through the registry (their localisers)."""
    pytest.importorskip("onnx")
    d = tmp_path_factory.mktemp("engines")
    out = {"sparse": get_engine("sparse", model=str(synthetic_model_path), threads=1),
           "cnn3d": get_engine("cnn3d", model=synthetic_cnn3d.write_model(d / "cnn3d", (32, 32, 32)), threads=1)}
    if (MODELS_DIR / "sparse_openkbp.onnx").exists():
        out["slice2d"] = get_engine("slice2d", model=synthetic_slice2d.write_models(d / "slice2d"), threads=1)
        out["cascade"] = get_engine("cascade", model=synthetic_cascade.write_model(d / "cascade"), threads=1)
    return out


@pytest.fixture(scope="module")
def scan():
    from organscope.io import load_volume

    return load_volume(SCAN)


def label_names(seg: Segmentation) -> np.ndarray:
    """The label map as organ names ('background' for 0)."""
    table = np.array(["background"] + [seg.names.get(v, "background") for v in range(1, max(seg.names) + 1)])
    return table[seg.labels.array]


def check(seg: Segmentation, volume: Volume) -> np.ndarray:
    """The protocol's promises on one result; returns the probabilities on the scan's grid."""
    probs = seg.probabilities
    assert isinstance(probs, ClassProbabilities) and probs.array.dtype == np.float32
    assert probs.classes == ("background", *seg.names.values())
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-4)
    assert probs.array.min() >= 0.0
    on = probs.on_grid(volume)
    assert on.shape == (len(probs.classes), *volume.shape)
    np.testing.assert_allclose(on.sum(axis=0), 1.0, atol=1e-4)
    agree = (np.array(probs.classes)[on.argmax(axis=0)] == label_names(seg)).mean()
    assert agree >= AGREE, agree
    present = set(seg.present())
    assert set(seg.confidence) == present
    assert all(0.0 < c <= 1.0 for c in seg.confidence.values()), seg.confidence
    return on


@pytest.mark.parametrize("name", ["sparse", "cnn3d", pytest.param("slice2d", marks=needs_sparse)])
@pytest.mark.parametrize("orientation", PHANTOMS)
def test_probabilities_and_confidence_on_phantoms(engines, phantoms, name, orientation):
    vol = phantoms[orientation]
    seg = engines[name].segment(vol, probabilities=True)
    assert seg.present(), "the synthetic model finds something in the phantom"
    check(seg, vol)
    plain = engines[name].segment(vol)
    assert plain.probabilities is None
    np.testing.assert_array_equal(plain.labels.array, seg.labels.array)
    assert plain.confidence == pytest.approx(seg.confidence)


@pytest.mark.parametrize("name", ["sparse", "cnn3d", pytest.param("slice2d", marks=needs_sparse)])
def test_a_flipped_copy_gives_the_same_world_probabilities(engines, phantoms, name):
    """LPS holds the RAS phantom's voxel centres with axes 0 and 1 reversed."""
    ras = engines[name].segment(phantoms["RAS"], probabilities=True)
    lps = engines[name].segment(phantoms["LPS"], probabilities=True)
    a = ras.probabilities.on_grid(phantoms["RAS"])
    b = lps.probabilities.on_grid(phantoms["LPS"])[:, ::-1, ::-1]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert ras.confidence == pytest.approx(lps.confidence, abs=1e-5)


@needs_sparse
def test_cascade_probabilities_and_confidence_on_the_scan_and_a_flipped_copy(engines, scan):
    eng = engines["cascade"]
    seg = eng.segment(scan, probabilities=True)
    assert len(seg.present()) >= 2
    on = check(seg, scan)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = scan.shape[0] - 1
    flipped = Volume(np.ascontiguousarray(scan.array[::-1]), scan.affine @ flip)
    seg2 = eng.segment(flipped, probabilities=True)
    np.testing.assert_allclose(seg2.probabilities.on_grid(flipped)[:, ::-1], on, atol=1e-4)
    assert seg2.confidence == pytest.approx(seg.confidence, abs=1e-5)


@pytest.mark.parametrize("name", ["sparse", "cnn3d", pytest.param("slice2d", marks=needs_sparse),
                                  pytest.param("cascade", marks=needs_sparse)])
def test_an_organ_subset_is_honoured_by_the_probabilities(engines, phantoms, scan, name):
    eng = engines[name]
    vol = scan if name == "cascade" else phantoms["PLI"]
    full = eng.segment(vol)
    organ = full.present()[0]
    seg = eng.segment(vol, organs=[organ], probabilities=True)
    assert list(seg.names.values()) == [organ] and set(seg.confidence) == {organ}
    assert seg.probabilities.classes == ("background", organ)
    check(seg, vol)


def test_priors_and_keep_carry_confidence_and_probabilities(engines, phantoms):
    from organscope.postprocess.priors import apply_priors

    seg = engines["sparse"].segment(phantoms["RAS"], probabilities=True)
    after = apply_priors(seg, rules=[])
    assert after.confidence == seg.confidence and after.probabilities is seg.probabilities
    organ = seg.present()[0]
    kept = seg.keep([organ])
    assert set(kept.confidence) == {organ} and kept.probabilities.classes == ("background", organ)
    np.testing.assert_allclose(kept.probabilities.array.sum(axis=0), 1.0, atol=1e-4)


def test_on_grid_follows_the_affine_and_is_background_outside_the_grid():
    """A 2-voxel box grid of 2x2x2-voxel cells at voxels 2..5 of an 8-voxel axis."""
    vol = Volume(np.zeros((8, 1, 1), np.int16), np.eye(4))
    aff = np.diag([2.0, 1.0, 1.0, 1.0])
    aff[0, 3] = 2.5  # box voxel 0 covers scan voxels 2 and 3 (centre 2.5)
    organ = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)  # 0 in the first cell, 1 in the second
    probs = ClassProbabilities(np.concatenate([1 - organ, organ]), aff, ("background", "x"))
    on = probs.on_grid(vol)
    np.testing.assert_allclose(on[1, :, 0, 0], [0, 0, 0, 0.25, 0.75, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(on.sum(axis=0), 1.0, atol=1e-6)


def _separable_reference(probs: ClassProbabilities, volume: Volume) -> np.ndarray:
    """on_grid as numpy's axis-by-axis linear interpolation (the former implementation)."""
    m = np.linalg.inv(probs.affine) @ np.asarray(volume.affine, float)
    out, outside = probs.array, np.zeros(volume.shape, bool)
    for a in range(3):
        n = out.shape[1 + a]
        u = m[a, a] * np.arange(volume.shape[a]) + m[a, 3]
        off = (u < -0.5 - 1e-3) | (u > n - 0.5 + 1e-3)
        outside |= off.reshape([-1 if b == a else 1 for b in range(3)])
        u = np.clip(u, 0, n - 1)
        i0 = np.floor(u).astype(int)
        w = (u - i0).reshape([1] + [-1 if b == a else 1 for b in range(3)])
        out = np.take(out, i0, axis=1 + a) * (1 - w) + np.take(out, np.minimum(i0 + 1, n - 1), axis=1 + a) * w
    out[:, outside] = 0.0
    out[0, outside] = 1.0
    return out


def test_on_grid_and_add_on_grid_match_axis_by_axis_interpolation():
    from organscope.geometry import scale_affine

    rng = np.random.default_rng(5)
    affine = np.diag([1.1, 0.9, 2.0, 1.0])
    affine[:3, 3] = [3, -4, 5]
    vol = Volume(np.zeros((13, 11, 9), np.int16), affine)
    for shape, zoom, shift in [((7, 9, 5), (2.0, 2.5, 1.0), (0, 0, 0)), ((10, 6, 8), (0.7, 1.3, 2.0), (1.5, -2, .3))]:
        grid_affine = scale_affine(affine, zoom)
        grid_affine[:3, 3] += shift
        probs = ClassProbabilities(rng.random((4, *shape)).astype(np.float32), grid_affine, ("a", "b", "c", "d"))
        expected = _separable_reference(probs, vol)
        np.testing.assert_allclose(probs.on_grid(vol), expected, atol=1e-6)
        acc = np.ones((4, *vol.shape), np.float32)
        probs.add_on_grid(vol, acc, 0.5, order=[3, 2, 1, 0])
        np.testing.assert_allclose(acc, 1 + 0.5 * expected[[3, 2, 1, 0]], atol=1e-6)
        # argmax_on_grid: the class of the highest interpolated value (voxels whose top two are within rounding
        # of each other may go either way), also into a box of a larger map with that box's grid
        top2 = np.sort(expected, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-5
        labels = probs.argmax_on_grid(vol)
        assert labels.dtype == np.uint8 and labels.shape == vol.shape
        np.testing.assert_array_equal(labels[clear], expected.argmax(0)[clear])
        big = np.full((15, 13, 11), 9, np.uint8)
        box_affine = affine.copy()
        box_affine[:3, 3] = affine[:3, :3] @ [2, 0, 1] + affine[:3, 3]
        probs.argmax_on_grid(Volume(np.zeros((11, 11, 8), np.int16), box_affine), out=big[2:13, :11, 1:9])
        inside = clear[2:, :, 1:]
        np.testing.assert_array_equal(big[2:13, :11, 1:9][inside], expected.argmax(0)[2:, :, 1:][inside])
        assert (big[:2] == 9).all() and (big[13:] == 9).all()
