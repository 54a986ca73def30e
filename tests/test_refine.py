"""Coarse-to-fine grid helpers of the sparse segmentation, on hand-made grids."""
import numpy as np
import pytest

from organscope.components import largest_components
from organscope.engines.sparse import refine


@pytest.mark.parametrize("spacing,expected", [
    ((4.688, 4.688, 3.0), [(2, 2, 3), (1, 1, 1)]),  # 4 mm -> (1, 1, 2): under 4x coarser than (1, 1, 1), dropped
    ((0.8, 0.8, 1.5), [(10, 10, 5), (5, 5, 3), (3, 3, 2)]),  # 2 / 0.8 = 2.5 -> 3: never finer than asked
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
    out = largest_components(g, 4)
    assert (out == 1).sum() == 125 and out[10, 10, 10] == 0
    assert (out == 2).sum() == 8
    assert (out == 3).sum() == 2 and out[18, 18, 1] == 0
    assert (g == 1).sum() == 133  # input untouched


# ---- grid-only refinement helpers (no full-resolution map until the end) ---------------------------------

def _blobs(shape, seed=0, n_labels=4):
    """A smooth random label grid (blocky regions with edges), as a segmentation level would hold."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.uniform_filter(rng.normal(size=shape), 3)
    return np.digitize(noise, np.quantile(noise, np.linspace(0, 1, n_labels + 1)[1:-1])).astype(np.uint8)


def test_disagreement_matches_scipy_max_min_filters():
    from scipy import ndimage

    g = _blobs((13, 11, 9))
    ref = ndimage.maximum_filter(g, size=3, mode="nearest") != ndimage.minimum_filter(g, size=3, mode="nearest")
    np.testing.assert_array_equal(refine.disagreement(g), ref)


@pytest.mark.parametrize("shape,coarse_step,step", [((40, 30, 20), (4, 4, 2), (2, 2, 1)), ((41, 29, 17), (5, 5, 3), (3, 3, 2)),
                                                     ((20, 20, 20), (2, 2, 3), (1, 1, 1))])
def test_refine_grid_and_first_candidates_equal_the_full_resolution_route(shape, coarse_step, step):
    coarse = _blobs(refine.grid_shape(shape, coarse_step), seed=1)
    fine = refine.refine_grid(coarse, coarse_step, step, shape)
    np.testing.assert_array_equal(fine, refine.grid_view(refine.expand(coarse, coarse_step, shape), step))
    allowed = np.random.default_rng(2).random(fine.shape) < 0.8
    seen = np.zeros(fine.shape, bool)
    got = refine.first_candidates(coarse, coarse_step, fine, step, shape, allowed, seen)
    np.testing.assert_array_equal(got, np.argwhere(refine.disagreement(fine) & allowed))


def test_edges_near_finds_exactly_the_new_disagreements():
    g = _blobs((12, 10, 8), seed=3)
    rng = np.random.default_rng(4)
    allowed = rng.random(g.shape) < 0.7
    before = refine.disagreement(g)
    changed = np.argwhere(rng.random(g.shape) < 0.05)
    g[tuple(changed.T)] = (g[tuple(changed.T)] + 1) % 4
    seen = np.zeros(g.shape, bool)
    got = refine.edges_near(g, changed, allowed, seen)
    near = np.zeros(g.shape, bool)
    for i, j, k in changed:
        near[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] = True
    np.testing.assert_array_equal(got, np.argwhere(refine.disagreement(g) & allowed & near))
    assert not seen.any()  # scratch left clean
    assert len(refine.edges_near(g, np.empty((0, 3), int), allowed, seen)) == 0
    assert before.shape == g.shape


def test_lookup_reads_the_cell_of_each_grid_point():
    shape = (23, 17, 11)
    mask = np.random.default_rng(5).random(refine.grid_shape(shape, (4, 3, 2))) < 0.5
    full = refine.expand(mask, (4, 3, 2), shape)
    np.testing.assert_array_equal(refine.lookup(mask, (4, 3, 2), (3, 2, 1), shape), refine.grid_view(full, (3, 2, 1)))


@pytest.mark.parametrize("ornt", [[[0, 1], [1, 1], [2, 1]], [[1, -1], [0, -1], [2, -1]], [[2, 1], [0, -1], [1, 1]]])
def test_expand_into_an_oriented_view_equals_expand_then_reorient(ornt):
    import nibabel.orientations as nio

    ornt = np.array(ornt, float)
    canon_shape, step = (14, 9, 7), (3, 2, 2)
    grid = _blobs(refine.grid_shape(canon_shape, step), seed=6)
    ref = nio.apply_orientation(refine.expand(grid, step, canon_shape), _inverse(ornt))
    out = np.empty(ref.shape, np.uint8)
    refine.expand_into(grid, step, nio.apply_orientation(out, ornt))
    np.testing.assert_array_equal(out, ref)


def _inverse(ornt):
    inv = np.zeros_like(ornt)
    for in_ax, (out_ax, flip) in enumerate(ornt):
        inv[int(out_ax)] = (in_ax, flip)
    return inv


def test_level_steps_drop_a_level_that_saves_too_little():
    # (1, 1, 2) would be only 2x coarser than (1, 1, 1): not worth a level of its own
    assert refine.level_steps((4.688, 4.688, 3.0), (8.0, 4.0, 2.0)) == [(2, 2, 3), (1, 1, 1)]
    assert refine.MIN_LEVEL_RATIO == 4


def test_largest_components_on_the_grid_equals_on_voxels():
    shape, step = (30, 24, 18), (3, 2, 2)
    grid = _blobs(refine.grid_shape(shape, step), seed=7)
    on_grid = refine.expand(largest_components(grid, 4), step, shape)
    on_voxels = largest_components(refine.expand(grid, step, shape), 4)
    np.testing.assert_array_equal(on_grid, on_voxels)
