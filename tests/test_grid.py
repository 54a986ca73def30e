"""The shared grid module (resampling to a given grid, the way back, the canonical round trip) and the CT windows,
on SYNTHETIC arrays and phantoms in every orientation."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import synthetic as syn
from organscope import grid as gridmod
from organscope.engines.cnn3d.preprocess import WINDOWS_HU
from organscope.geometry import Canonical
from organscope.intensity import windows

GRID = (32, 32, 32)


def test_taps_are_normalised_and_identity_when_sizes_match():
    idx, w = gridmod._taps(128, 128)
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(idx[np.arange(128), w.argmax(1)], np.arange(128))
    idx, w = gridmod._taps(512, 128)
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)
    assert (w > 0).sum(1).max() >= 4  # anti-aliasing: every output voxel averages several input voxels


def test_resample_keeps_constants_and_averages_when_shrinking(rng):
    const = np.full((40, 30, 20), 7.0, np.float32)
    np.testing.assert_allclose(gridmod.resample(const, (10, 15, 20)), 7.0, rtol=1e-5)
    # a linear ramp stays a ramp with the same value at the same (edge-aligned) positions
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32)[:, None, None], (64, 4, 4))
    out = gridmod.resample(ramp, (16, 4, 4))
    np.testing.assert_allclose(out[2:-2, 0, 0], ((np.arange(16) + 0.5) * 4 - 0.5)[2:-2], atol=1e-4)
    # high-frequency noise is damped (anti-aliasing), not aliased through
    noise = rng.standard_normal((128, 8, 8)).astype(np.float32)
    assert gridmod.resample(noise, (32, 8, 8)).std() < 0.6 * noise.std()


def test_resample_gives_the_same_result_whatever_the_memory_order(rng):
    # NIfTI scans arrive Fortran-ordered (memory-mapped as stored); flipped views have negative strides
    vol = rng.integers(-1000, 2000, (37, 23, 51)).astype(np.int16)
    ref = gridmod.resample(np.ascontiguousarray(vol), (16, 9, 20))
    views = [np.asfortranarray(vol), vol.transpose(2, 0, 1).copy().transpose(1, 2, 0),
             vol[::-1].copy()[::-1], np.asfortranarray(vol[:, ::-1])[:, ::-1]]
    for v in views:
        out = gridmod.resample(v, (16, 9, 20))
        assert out.shape == (16, 9, 20) and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, ref)


def test_windows_match_their_definition():
    hu = np.array([-1000, -160, 40, 240, 1300, 3000], np.float32).reshape(1, 1, 6)
    w = windows(hu, WINDOWS_HU)
    np.testing.assert_allclose(w[0, 0, 0], [0, 0, 0.5, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(w[1, 0, 0], [0, 0.27, 0.37, 0.47, 1, 1], atol=1e-6)


def test_nearest_indices_invert_an_even_zoom():
    np.testing.assert_array_equal(gridmod.nearest_indices(8, 4), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(gridmod.nearest_indices(4, 4), [0, 1, 2, 3])


@pytest.mark.parametrize("name", ["RAS", "LPS", "PLI", "oblique"])
def test_grid_round_trip_lands_on_the_input_grid(phantoms, name):
    vol = phantoms[name]
    hu, gmap = gridmod.to_grid(vol, GRID)
    assert hu.shape == GRID
    # the grid's affine puts the grid where the scan is: the bone sphere is bright at its world centre
    ijk = np.round(np.linalg.solve(gmap.grid_affine, np.r_[syn.BONE_SPHERE.center_mm, 1])[:3]).astype(int)
    assert hu[tuple(ijk)] > 500
    back = gridmod.from_grid((hu > 300).astype(np.uint8), gmap, vol)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.affine, vol.affine)
    truth = vol.array > 300
    dice = 2 * np.logical_and(back.array, truth).sum() / (back.array.sum() + truth.sum())
    assert dice > 0.85, dice


@pytest.mark.parametrize("name", ["RAS", "LPS", "PLI", "oblique"])
def test_canonical_round_trip_is_exact_in_every_orientation(phantoms, name):
    vol = phantoms[name]
    can = Canonical(vol.affine, vol.shape)
    canon = can.view(vol.array)
    assert canon.shape == can.shape
    assert "".join(__import__("nibabel").orientations.aff2axcodes(can.affine)) == "RAS"
    np.testing.assert_array_equal(can.to_input(canon), vol.array)
    # a world point lands on the same value through either grid
    ijk = np.array([3, 5, 7])
    world = vol.voxel_to_world(ijk[None])[0]
    cijk = np.rint(np.linalg.solve(can.affine, np.r_[world, 1])[:3]).astype(int)
    assert canon[tuple(cijk)] == vol.array[tuple(ijk)]
    # a canonical box maps to the input box holding the same voxels
    start, stop = np.array([2, 3, 4]), np.array([6, 8, 9])
    lo, hi = can.box_to_input(start, stop)
    mask = np.zeros(can.shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    back = can.to_input(mask)
    idx = np.argwhere(back)
    np.testing.assert_array_equal(idx.min(0), lo)
    np.testing.assert_array_equal(idx.max(0), hi)
