"""Heat-map localiser pieces: Gaussian targets in world mm, centroid = mid-point of the region above tau (absent
below it), and the localiser's boxes on a flipped grid; the network part with a few training steps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from organscope.localize.heatmap import TAU, centroid_from_heatmap, gaussian_heatmap


def test_gaussian_is_one_at_the_centroid_and_follows_the_variance_in_mm():
    aff = np.diag([2.0, 3.0, 5.0, 1.0])
    aff[:3, 3] = [-10, 0, 10]
    c_vox = np.array([10, 7, 4])
    c_mm = aff[:3, :3] @ c_vox + aff[:3, 3]
    h = gaussian_heatmap((20, 16, 10), aff, c_mm, 150.0)
    assert h[tuple(c_vox)] == pytest.approx(1.0)
    # 3 voxels along axis 1 = 9 mm away: exp(-81 / 300)
    assert h[10, 10, 4] == pytest.approx(np.exp(-81 / 300), rel=1e-5)


def test_centroid_is_the_mid_point_of_the_region_above_tau_and_absent_below():
    h = np.zeros((20, 20, 20), np.float32)
    h[4:9, 10:13, 2:4] = 0.5  # region x 4..8, y 10..12, z 2..3
    h[15, 15, 15] = 0.2       # a weaker false positive elsewhere
    h[6, 11, 3] = 0.9         # the peak is inside the first region
    c, peak = centroid_from_heatmap(h, TAU)
    np.testing.assert_allclose(c, [6.0, 11.0, 2.5])
    assert peak == pytest.approx(0.9)
    c, peak = centroid_from_heatmap(np.full((5, 5, 5), 0.05, np.float32), TAU)
    assert c is None and peak == pytest.approx(0.05)


def test_trained_few_steps_localiser_runs_end_to_end(tmp_path, phantoms):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from organscope.localize.heatmap import HeatmapLocalizer
    from organscope.training.train_heatmap import export, train

    rng = np.random.default_rng(0)
    images = rng.integers(-1000, 1000, (3, 32, 32, 32)).astype(np.int16)
    h = np.zeros((3, 2, 16, 16, 16), np.float16)
    h[:, 0, 6:9, 6:9, 6:9] = 1
    torch.set_num_threads(1)
    net = train(images, h, np.ones((3, 2), bool), [0, 1, 2], steps=3, crop=32, width=4, run_dir=tmp_path,
                log=lambda s: None)
    assert net.steps_done == 3 and (tmp_path / "last.pt").exists()
    path = tmp_path / "hm.onnx"
    assert export(net, path, (32, 32, 32)) < 1e-3
    path.with_suffix(".json").write_text(json.dumps({"organs": ["brainstem", "mandible"], "grid": [16, 16, 16],
                                                     "input_grid": [32, 32, 32]}))
    loc = HeatmapLocalizer(path, threads=1).locate(phantoms["LPS"])
    assert set(loc) == {"brainstem", "mandible"}
    for item in loc.values():
        d = item.to_dict()
        assert set(d) == {"present", "centroid_mm", "box_mm", "box_voxels", "confidence"}
        if d["present"]:
            lo, hi = np.array(d["box_voxels"])
            assert (lo >= 0).all() and (hi < np.array(phantoms["LPS"].shape)).all() and (lo <= hi).all()
    # half-extents from the card: a present organ's box is centroid +- that (in mm, clipped to the scan)
    big = {"organs": ["brainstem", "mandible"], "grid": [16, 16, 16], "input_grid": [32, 32, 32], "tau": -1.0,
           "box_half_extent_mm": {"brainstem": [5.0, 6.0, 7.0], "mandible": [1000.0, 1000.0, 1000.0]}}
    path.with_suffix(".json").write_text(json.dumps(big))
    vol = phantoms["RAS"]
    loc = HeatmapLocalizer(path, threads=1).locate(vol)
    lo, hi = np.array(loc["brainstem"].box_mm)
    assert loc["brainstem"].present and np.all(hi - lo <= 2 * np.array([5.0, 6.0, 7.0]) + 2 * vol.spacing_mm)
    np.testing.assert_array_equal(loc["mandible"].box_voxels, [[0, 0, 0], list(np.array(vol.shape) - 1)])
    # a run resumes from its checkpoint
    again = train(images, h, np.ones((3, 2), bool), [0, 1, 2], steps=5, crop=32, width=4, run_dir=tmp_path,
                  log=lambda s: None)
    assert again.steps_done == 5
    # a card whose grid the network does not output is refused
    path.with_suffix(".json").write_text(json.dumps({"organs": ["brainstem", "mandible"], "grid": [8, 8, 8],
                                                     "input_grid": [32, 32, 32]}))
    from organscope.errors import ModelError
    with pytest.raises(ModelError, match="outputs"):
        HeatmapLocalizer(path, threads=1).locate(phantoms["LPS"])


def test_untrained_heatmap_network_outputs_zero_on_the_halved_grid():
    """The last layer starts at zero, so training starts at the all-zero heat-map rather than at +-1 noise
    (which a CPU budget spent its steps undoing, leaving peaks at noise); the output is the input grid halved."""
    torch = pytest.importorskip("torch")
    from organscope.training.train_heatmap import train

    rng = np.random.default_rng(0)
    images = rng.integers(-1000, 1000, (2, 32, 32, 32)).astype(np.int16)
    h = np.zeros((2, 3, 16, 16, 16), np.float16)
    torch.set_num_threads(1)
    net = train(images, h, np.ones((2, 3), bool), [0, 1], steps=0, width=4, log=lambda s: None)
    with torch.no_grad():
        out = net(torch.rand(1, 2, 32, 32, 32))
    assert out.shape == (1, 3, 16, 16, 16) and float(out.abs().max()) == 0.0


def test_cut_sample_targets_the_remaining_part_and_zero_for_an_organ_cut_away():
    """Training on scans cut short: the cut is stretched back to the full grid (as the engines resample a short
    scan), an organ's target peaks at the centroid of what is left of it, and is zero when it is cut away."""
    pytest.importorskip("torch")
    from organscope.training.train_heatmap import cut_sample

    image = np.full((32, 32, 32), -1000, np.int16)
    target = np.zeros((32, 32, 32), np.uint8)
    target[10:14, 10:14, 2:6] = 2     # organ 0: slices 2..5, cut away below
    target[16:20, 8:12, 12:28] = 3    # organ 1: slices 12..27, half of it kept
    image[target > 0] = 40
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    img, heat = cut_sample(image, target, affine, start=20, slices=16, heat_shape=(16, 16, 16), n_organs=2)
    assert img.shape == (32, 32, 32) and heat.shape == (2, 16, 16, 16)
    assert heat[0].max() == 0.0
    # organ 1's remaining part: slices 20..27 = cut slices 0..7 of 16, stretched 2x: fine 0..15, coarse 0..7
    peak = np.unravel_index(np.argmax(heat[1]), heat[1].shape)
    assert abs(peak[0] - 8.75) <= 1 and abs(peak[1] - 4.75) <= 1 and abs(peak[2] - 3.5) <= 1
    assert heat[1].max() > 0.9
    # the image is the cut stretched: organ 1's HU fill the first half of the slices
    assert (img[17, 9, :14] > 0).all() and (img[17, 9, 21:] < -500).all()


def test_presence_cut_keeps_slices_along_the_superior_axis_of_an_oblique_anisotropic_grid():
    """The presence-threshold scans cut short are cut across the voxel axis closest to the patient's
    superior-inferior direction by direction, not by the largest z component: here axis 0 has 5 mm voxels
    tilted 30 degrees from superior (z component 2.5 mm) and axis 2 has 1 mm voxels tilted 60 degrees (z
    component 0.87 mm); the cut is across axis 2 and keeps only slices whose centre lies below the given z."""
    pytest.importorskip("torch")
    from organscope.training.train_heatmap import _cut
    from organscope.volume import Volume

    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    affine = np.eye(4)
    affine[:3, 0] = 5.0 * np.array([c, 0.0, s])      # mostly left-right, 30 degrees up
    affine[:3, 1] = [0.0, 1.0, 0.0]
    affine[:3, 2] = 1.0 * np.array([-s, 0.0, c])     # mostly superior, 30 degrees off
    vol = Volume(np.zeros((8, 6, 40), np.int16), affine)
    lab = Volume(np.zeros((8, 6, 40), np.uint8), affine)
    # slice k's centre: z = 5 s * 3.5 + c * k, below the threshold for k = 0..20
    cut = _cut(vol, lab, keep_below_mm=5 * s * 3.5 + c * 20.5)
    assert cut is not None
    cut_vol, cut_lab = cut
    assert cut_vol.shape == (8, 6, 21) and cut_lab.shape == (8, 6, 21)
    np.testing.assert_allclose(cut_vol.affine, affine)


def test_organ_cut_removes_one_organ_wholly_and_keeps_enough_slices():
    """Cuts that take an organ out of the field of view (a scan starting in the neck): every slice of the organ
    is gone, the cut ends 1..max_gap slices from it, and at least min_slices remain; None when none fits."""
    from organscope.training.train_heatmap import organ_cut

    target = np.ones((8, 8, 100), np.uint8)
    target[2:4, 2:4, 10:20] = 2    # organ 0 near the bottom: only the part above it can be kept
    target[4:6, 4:6, 50:60] = 3    # organ 1 in the middle: either side
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        start, n = organ_cut(target, np.array([True, True]), rng, min_slices=24, max_gap=6)
        kept = target[:, :, start:start + n]
        gone = [o for o in (2, 3) if not (kept == o).any()]
        assert n >= 24 and len(gone) >= 1
        seen.add((start == 0, tuple(gone)))
        gaps = []
        for o in gone:  # the organ chosen ends 1..6 slices from the cut (others beyond it go too)
            ks = np.flatnonzero((target == o).any(axis=(0, 1)))
            gaps.append(start - ks.max() - 1 if start > 0 else ks.min() - n)  # slices dropped between
        assert any(1 <= g <= 6 for g in gaps), gaps
    assert (False, (2,)) in seen and (True, (3,)) in seen and (False, (2, 3)) in seen
    # an uncontoured organ is never the one cut away; a case with no organ that allows a cut gives None
    assert organ_cut(target, np.array([False, False]), rng) is None
    short = target[:, :, 5:30]
    assert organ_cut(short, np.array([True, False]), rng, min_slices=24) is None


def test_false_peaks_weigh_more_with_fp_weight():
    """heatmap_loss: a false peak (prediction high, target 0) pulls harder with fp_weight, a missed peak as hard
    as before relative to the rest, and an uncontoured organ not at all."""
    torch = pytest.importorskip("torch")
    from organscope.training.train_heatmap import heatmap_loss

    target = torch.zeros(1, 2, 8, 8, 8)
    target[0, 0, 2, 2, 2] = 1.0                     # organ 0's peak, which the prediction misses
    pred = torch.zeros(1, 2, 8, 8, 8)
    pred[0, 0, 6, 6, 6] = 0.8                       # ... and puts elsewhere
    pred[0, 1, 4, 4, 4] = 0.9                       # organ 1: uncontoured, anything goes
    mask = torch.tensor([1.0, 0.0])[None, :, None, None, None]

    def grads(fp):
        p = pred.clone().requires_grad_(True)
        heatmap_loss(p, target, mask, fg_weight=20.0, fp_weight=fp).backward()
        return p.grad[0]

    g0, g1 = grads(0.0), grads(20.0)
    ratio = lambda g: float(g[0, 6, 6, 6] / -g[0, 2, 2, 2])  # false peak's pull against the missed peak's
    assert ratio(g1) > 10 * ratio(g0) > 0
    assert float(g0[1].abs().max()) == 0 and float(g1[1].abs().max()) == 0
