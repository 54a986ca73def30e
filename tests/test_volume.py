"""Volume: construction checks and the exact canonical (RAS+) round trip for all 48 axis orders/flips."""
import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.errors import GeometryError, InputError
from organscope.volume import Volume

SHAPE = (5, 6, 7)
SPACING = np.array([0.8, 1.3, 2.5])


def _ras_volume(rng):
    aff = syn.ras_affine(SHAPE, SPACING, center_mm=(3.0, -7.0, 11.0))
    return Volume(rng.integers(-1000, 1000, SHAPE).astype(np.int16), aff)


@pytest.mark.parametrize("perm,flips", syn.ALL_ORIENTATIONS, ids=lambda v: "".join(map(str, v)))
def test_canonical_round_trip_all_48_orientations(perm, flips, rng):
    ras = _ras_volume(rng)
    aff, shape = syn.reoriented(ras.affine, SHAPE, perm, flips)
    vol = Volume(syn.reorient_array(ras.array, perm, flips), aff)
    assert vol.shape == shape
    # the fixture itself: the same voxel centres hold the same values
    idx = np.argwhere(np.ones(shape, bool))
    back = np.rint(ras.world_to_voxel(vol.voxel_to_world(idx))).astype(int)
    np.testing.assert_array_equal(ras.array[tuple(back.T)], vol.array[tuple(idx.T)])

    canon, ornt = vol.to_canonical()
    assert canon.axcodes == ("R", "A", "S")
    np.testing.assert_allclose(canon.affine, ras.affine, atol=1e-9)
    np.testing.assert_array_equal(canon.array, ras.array)
    np.testing.assert_allclose(canon.spacing_mm, SPACING)

    restored = vol.from_canonical(canon.array, ornt)
    np.testing.assert_array_equal(restored.array, vol.array)
    np.testing.assert_array_equal(restored.affine, vol.affine)
    assert restored.array.dtype == vol.array.dtype


def test_from_canonical_maps_a_label_map_back(rng):
    ras = _ras_volume(rng)
    aff, _ = syn.reoriented(ras.affine, SHAPE, (2, 0, 1), (1, 0, 1))
    vol = Volume(syn.reorient_array(ras.array, (2, 0, 1), (1, 0, 1)), aff)
    canon, ornt = vol.to_canonical()
    labels = (canon.array > 0).astype(np.uint8)
    out = vol.from_canonical(labels, ornt)
    np.testing.assert_array_equal(out.array, (vol.array > 0).astype(np.uint8))
    assert out.array.dtype == np.uint8


def test_from_canonical_rejects_wrong_shape(rng):
    ras = _ras_volume(rng)
    _, ornt = ras.to_canonical()
    with pytest.raises(InputError):
        ras.from_canonical(np.zeros((5, 6, 8), np.uint8), ornt)


def test_oblique_canonical_keeps_world_positions():
    aff = syn.oblique_affine(20.0, SHAPE, SPACING, (0.0, 0.0, 0.0))
    vol = Volume(np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE), aff)
    assert vol.axcodes == ("R", "A", "S")
    canon, _ = vol.to_canonical()
    np.testing.assert_allclose(canon.affine, aff)
    np.testing.assert_array_equal(canon.array, vol.array)


def test_oblique_lps_canonical_keeps_world_positions(rng):
    aff = syn.oblique_affine(20.0, SHAPE, SPACING, (5.0, 6.0, -7.0))
    aff = aff @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    vol = Volume(rng.integers(-100, 100, SHAPE).astype(np.int16), aff)
    assert vol.axcodes == ("L", "P", "S")
    canon, ornt = vol.to_canonical()
    idx = np.argwhere(np.ones(SHAPE, bool))
    cidx = np.rint(canon.world_to_voxel(vol.voxel_to_world(idx))).astype(int)
    np.testing.assert_array_equal(canon.array[tuple(cidx.T)], vol.array[tuple(idx.T)])
    np.testing.assert_array_equal(vol.from_canonical(canon.array, ornt).array, vol.array)


def test_singleton_fourth_axis_is_dropped():
    v = Volume(np.zeros((3, 4, 5, 1), np.int16), np.eye(4))
    assert v.shape == (3, 4, 5)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 2), (0, 3, 4)])
def test_bad_shapes_raise_input_error(shape):
    with pytest.raises(InputError):
        Volume(np.zeros(shape, np.int16), np.eye(4))


def test_not_an_array_raises():
    with pytest.raises(InputError):
        Volume([[[1]]], np.eye(4))


@pytest.mark.parametrize("affine", [np.eye(3), np.diag([1, 1, np.nan, 1.0]), np.diag([0.01, 1, 1, 1.0]),
                                    np.diag([1, 1, 100.0, 1]),
                                    np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])])
def test_bad_affine_raises_geometry_error(affine):
    with pytest.raises(GeometryError):
        Volume(np.zeros((3, 3, 3), np.int16), affine)


def test_with_array_keeps_grid_and_checks_shape(rng):
    v = _ras_volume(rng)
    lab = v.with_array(np.ones(SHAPE, np.uint8))
    np.testing.assert_array_equal(lab.affine, v.affine)
    with pytest.raises(InputError):
        v.with_array(np.ones((5, 6, 6), np.uint8))


def test_spacing_and_axcodes(rng):
    v = _ras_volume(rng)
    np.testing.assert_allclose(v.spacing_mm, SPACING)
    aff, _ = syn.reoriented(v.affine, SHAPE, (1, 0, 2), (1, 1, 1))
    w = Volume(np.zeros((6, 5, 7), np.int16), aff)
    assert w.axcodes == ("P", "L", "I")
    np.testing.assert_allclose(w.spacing_mm, SPACING[[1, 0, 2]])
