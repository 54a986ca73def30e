"""Coarse-to-fine grid helpers of the sparse segmentation, on hand-made grids."""
import numpy as np
import pytest

from organscope.engines.sparse import refine


@pytest.mark.parametrize("spacing,expected", [
    ((4.688, 4.688, 3.0), [(2, 2, 3), (1, 1, 1)]),        # 2 mm level is not finer than 4 mm: dropped
    ((0.8, 0.8, 1.5), [(10, 10, 5), (5, 5, 3), (2, 2, 1)]),  # 2 / 0.8 = 2.5 rounds to 2 (half to even)
    ((2.0, 2.0, 2.0), [(4, 4, 4), (2, 2, 2), (1, 1, 1)]),
    ((10.0, 10.0, 10.0), [(1, 1, 1)]),
])
def test_level_steps(spacing, expected):
    assert refine.level_steps(spacing, (8.0, 4.0, 2.0)) == expected


def test_level_steps_never_coarser_than_previous():
    # 4 mm would be (1, 2, 1) after (2, 1, 3)? no: a level must be at most as coarse on every axis
    steps = refine.level_steps((4.0, 8.0, 2.7), (8.0, 4.0, 2.0))
    for a, b in zip(steps, steps[1:]):
        assert all(x <= y for x, y in zip(b, a)) and b != a


def test_grid_view_points_and_voxels():
    a = np.arange(10 * 9 * 8).reshape(10, 9, 8)
    step = (4, 3, 2)
    g = refine.grid_view(a, step)
    assert g.shape == (3, 3, 4)  # i: 2, 6, 9 (the last, partial cell [8, 10) gets the clamped point 9); j: 1, 4, 7
    assert not np.shares_memory(g, a)  # a copy: the engine writes classified labels into it
    idx = np.argwhere(np.ones(g.shape, bool))
    vox = refine.grid_to_voxels(idx, step, a.shape)
    assert vox.dtype == np.int32
    np.testing.assert_array_equal(a[tuple(vox.T)], g[tuple(idx.T)])
    np.testing.assert_array_equal(vox[-1], [9, 7, 7])


@pytest.mark.parametrize("shape,step", [((12, 9, 8), (4, 3, 2)), ((16, 16, 5), (2, 2, 1)), ((20, 18, 14), (10, 6, 7))])
def test_expand_round_trip_when_cells_tile(shape, step):
    grid = np.random.default_rng(0).integers(0, 5, size=tuple(n // s for n, s in zip(shape, step))).astype(np.uint8)
    full = refine.expand(grid, step, shape)
    assert full.shape == shape and full.flags.c_contiguous
    np.testing.assert_array_equal(refine.grid_view(full, step), grid)
    # every voxel holds the label of its cell's grid point
    ii = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) // np.array(step)
    np.testing.assert_array_equal(full, grid[ii[..., 0], ii[..., 1], ii[..., 2]])


@pytest.mark.parametrize("n,step", [(10, 4), (125, 10), (75, 6), (40, 3), (5, 2)])
def test_expand_covers_every_shape(n, step):
    shape = (n, 3, 3)
    labels = np.zeros(shape, np.uint8)
    grid = refine.grid_view(labels, (step, 1, 1))
    assert refine.expand(grid, (step, 1, 1), shape).shape == shape


def test_segment_any_shape(synthetic_engine):
    from helpers import synthetic as syn
    from organscope.volume import Volume

    shape = (41, 30, 16)  # 8 mm level steps (10, 6, 3): 41 % 10 = 1 -> no grid point in the last cell
    aff = syn.ras_affine(shape, center_mm=syn.BONE_SPHERE.center_mm)
    seg = synthetic_engine.segment(Volume(syn.phantom(aff, shape), aff))
    assert seg.labels.shape == shape


def test_disagreement_on_a_hand_made_grid():
    g = np.zeros((5, 5, 5), np.uint8)
    g[2, 2, 2] = 1
    d = refine.disagreement(g)
    expected = np.zeros_like(d)
    expected[1:4, 1:4, 1:4] = True
    np.testing.assert_array_equal(d, expected)
    # an edge between two halves: the two layers next to it disagree
    h = np.zeros((6, 3, 3), np.uint8)
    h[3:] = 2
    np.testing.assert_array_equal(refine.disagreement(h).any(axis=(1, 2)), [0, 0, 1, 1, 0, 0])
    assert not refine.disagreement(np.full((4, 4, 4), 3, np.uint8)).any()


def test_majority_flips_isolated_voxel_and_keeps_a_big_block():
    g = np.zeros((12, 12, 12), np.uint8)
    g[3, 3, 3] = 2                  # isolated: 26 neighbours are 0 -> becomes 0
    g[6:11, 6:11, 6:11] = 1         # a 5x5x5 block: corners have 8 of 27 -> no label reaches 20
    out = refine.majority_smooth(g, 20)
    assert out[3, 3, 3] == 0
    np.testing.assert_array_equal(out[6:11, 6:11, 6:11], 1)
    assert out.sum() == 125
    assert g[3, 3, 3] == 2  # input untouched


def test_majority_fills_a_hole_and_respects_the_threshold():
    g = np.ones((5, 5, 5), np.uint8)
    g[2, 2, 2] = 0
    assert refine.majority_smooth(g, 20)[2, 2, 2] == 1
    # a voxel with exactly 19 same neighbours (itself excluded) + itself: 20 of 27 -> stays/changes at 20, not 21
    h = np.zeros((3, 3, 3), np.uint8)
    h.flat[:7] = 1      # 7 ones, 20 zeros around the centre (index 13 is 0)
    h[1, 1, 1] = 1      # centre is 1: 8 ones and 19 zeros -> no label reaches 20
    assert refine.majority_smooth(h, 20)[1, 1, 1] == 1
    h.flat[6] = 0       # now 7 ones, 20 zeros -> the centre becomes 0
    assert refine.majority_smooth(h, 20)[1, 1, 1] == 0
    assert refine.majority_smooth(h, 21)[1, 1, 1] == 1


def test_majority_on_uniform_grid_returns_it():
    g = np.full((3, 4, 5), 2, np.uint8)
    assert refine.majority_smooth(g, 20) is g


def test_largest_components_keeps_biggest_blob_per_label():
    g = np.zeros((20, 20, 20), np.uint8)
    g[1:6, 1:6, 1:6] = 1        # 125 voxels
    g[10:12, 10:12, 10:12] = 1  # 8 voxels, same label -> removed
    g[15:17, 1:3, 1:3] = 2      # label 2: a single small blob -> kept
    g[14, 14, 14] = 3           # two touching diagonally (26-connected) -> one component, kept
    g[15, 15, 15] = 3
    g[18, 18, 1] = 3            # smaller component of label 3 -> removed
    out = refine.largest_components(g, 4)
    assert (out == 1).sum() == 125 and out[10, 10, 10] == 0
    assert (out == 2).sum() == 8
    assert (out == 3).sum() == 2 and out[18, 18, 1] == 0
    assert (g == 1).sum() == 133  # input untouched
