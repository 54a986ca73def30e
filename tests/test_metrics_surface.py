import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from organscope.errors import InputError
from organscope.metrics import surface_distances, surface_voxels

SPACING = (2.0, 1.0, 3.0)


def _cube(shift=(0, 0, 0), shape=(10, 10, 10)):
    m = np.zeros(shape, bool)
    s = [slice(2 + d, 6 + d) for d in shift]
    m[tuple(s)] = True
    return m


def test_surface_is_six_connected_shell():
    cube = _cube()
    surf = surface_voxels(cube)
    assert surf.sum() == 4**3 - 2**3
    assert not surf[3:5, 3:5, 3:5].any()
    edge = np.ones((3, 3, 3), bool)  # touches the array border: every voxel but the centre is surface
    assert surface_voxels(edge).sum() == 26


def test_cube_shifted_one_voxel_along_2mm_axis():
    # Per side: 16 surface voxels of the leading face at 2 mm, 4 face-interior voxels at 1 mm
    # (1 mm away along the j axis), the other 36 at 0 mm -> 112 distances in all.
    sd = surface_distances(_cube((1, 0, 0)), _cube(), SPACING)
    assert sorted(np.unique(sd.pred_to_ref_mm).tolist()) == [0.0, 1.0, 2.0]
    assert (sd.pred_to_ref_mm == 2).sum() == 16 and (sd.ref_to_pred_mm == 1).sum() == 4
    assert sd.hd95() == pytest.approx(2.0)
    assert sd.hausdorff() == pytest.approx(2.0)
    assert sd.nsd(0.5) == pytest.approx(72 / 112)
    assert sd.nsd(1.5) == pytest.approx(80 / 112)
    assert sd.nsd(2.0) == pytest.approx(1.0)  # distance <= tolerance counts
    assert sd.mean_surface_distance() == pytest.approx((32 * 2 + 8 * 1) / 112)


def test_cube_shifted_one_voxel_along_3mm_axis():
    sd = surface_distances(_cube((0, 0, 1)), _cube(), SPACING)
    assert sd.hd95() == pytest.approx(3.0)
    assert sd.nsd(2.9) == pytest.approx(80 / 112)
    assert sd.nsd(3.0) == pytest.approx(1.0)


def test_identical_masks():
    sd = surface_distances(_cube(), _cube(), SPACING)
    assert sd.hd95() == 0.0 and sd.nsd(0.0) == 1.0 and sd.mean_surface_distance() == 0.0


def _brute_surface(mask):
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1, 1:-1]
    all_in = np.ones_like(mask)
    for ax in range(3):
        for d in (-1, 1):
            all_in &= np.roll(p, d, axis=ax)[1:-1, 1:-1, 1:-1]
    return inner & ~all_in


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 8)
    pred = rng.random(shape) < 0.3
    ref = rng.random(shape) < 0.3
    pred[:, :, :2] = ref[:4] = False
    spacing = rng.uniform(0.5, 3.0, 3)
    sd = surface_distances(pred, ref, spacing)
    sp, sr = (np.argwhere(_brute_surface(m)) * spacing for m in (pred, ref))
    d = cdist(sp, sr)
    p2r, r2p = d.min(axis=1), d.min(axis=0)
    assert np.allclose(np.sort(sd.pred_to_ref_mm), np.sort(p2r))
    assert sd.hd95() == pytest.approx(max(np.percentile(p2r, 95), np.percentile(r2p, 95)))
    assert sd.nsd(2.0) == pytest.approx(((p2r <= 2).sum() + (r2p <= 2).sum()) / (p2r.size + r2p.size))
    assert sd.mean_surface_distance() == pytest.approx(np.concatenate([p2r, r2p]).mean())


def test_crop_does_not_change_results():
    small = surface_distances(_cube((1, 0, 0)), _cube(), SPACING)
    big = surface_distances(np.pad(_cube((1, 0, 0)), 7), np.pad(_cube(), 7), SPACING)
    assert np.array_equal(np.sort(small.pred_to_ref_mm), np.sort(big.pred_to_ref_mm))


def test_empty_conventions():
    empty = np.zeros((6, 6, 6), bool)
    both = surface_distances(empty, empty, SPACING)
    assert math.isnan(both.hd95()) and math.isnan(both.nsd(2)) and math.isnan(both.mean_surface_distance())
    one = surface_distances(_cube(shape=(8, 8, 8)), np.zeros((8, 8, 8), bool), SPACING)
    assert one.hd95() == math.inf and one.nsd(2) == 0.0 and one.mean_surface_distance() == math.inf
    other = surface_distances(np.zeros((8, 8, 8), bool), _cube(shape=(8, 8, 8)), SPACING)
    assert other.hd95() == math.inf and other.nsd(100) == 0.0


def test_spacing_is_required():
    with pytest.raises(InputError, match="spacing"):
        surface_distances(_cube(), _cube(), None)
    with pytest.raises(InputError, match="3 positive"):
        surface_distances(_cube(), _cube(), (1.0, 1.0))
    with pytest.raises(InputError):
        surface_distances(_cube(), _cube(), (1.0, 0.0, 1.0))
