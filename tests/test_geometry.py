"""Affine maths, and the sparse engine (with the SYNTHETIC analytic test model) giving the same organ at the
same world point whether a phantom is stored RAS, LPS, PLI (OpenKBP) or on an oblique grid."""
import numpy as np
import pytest

from helpers import synthetic as syn
from organscope import geometry
from organscope.errors import GeometryError

ORIENTATION_NAMES = ["RAS", "LPS", "PLI", "oblique"]


def _random_affine(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = q @ np.diag(rng.uniform(0.5, 3.0, 3))
    aff[:3, 3] = rng.uniform(-200, 200, 3)
    return aff


def test_voxel_world_round_trip(rng):
    for _ in range(10):
        aff = _random_affine(rng)
        vox = rng.uniform(-5, 300, size=(50, 3))
        world = geometry.voxel_to_world(aff, vox)
        np.testing.assert_allclose(geometry.world_to_voxel(aff, world), vox, atol=1e-9)
        # against plain homogeneous maths
        np.testing.assert_allclose(world, (np.c_[vox, np.ones(50)] @ aff.T)[:, :3])


def test_voxel_to_world_single_point_and_spacing():
    aff = np.array([[0, -1.3, 0, 10], [-0.8, 0, 0, 20], [0, 0, -2.5, 30], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(geometry.voxel_to_world(aff, [1, 2, 3]), [[10 - 2.6, 20 - 0.8, 30 - 7.5]])
    np.testing.assert_allclose(geometry.spacing_mm(aff), [0.8, 1.3, 2.5])
    assert geometry.axcodes(aff) == ("P", "L", "I")


def test_check_affine_messages():
    with pytest.raises(GeometryError, match="4x4"):
        geometry.check_affine(np.eye(3))
    with pytest.raises(GeometryError, match="NaN"):
        geometry.check_affine(np.diag([1, np.inf, 1, 1.0]))
    with pytest.raises(GeometryError, match="spacing"):
        geometry.check_affine(np.diag([0, 1, 1, 1.0]))
    with pytest.raises(GeometryError, match="singular"):
        geometry.check_affine(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))


def test_crop_and_scale_affine():
    aff = syn.oblique_affine(20.0, (10, 10, 10), (0.8, 1.3, 2.5), (0, 0, 0))
    crop = geometry.crop_affine(aff, (2, 3, 4))
    np.testing.assert_allclose(geometry.voxel_to_world(crop, [0, 0, 0]), geometry.voxel_to_world(aff, [2, 3, 4]))
    np.testing.assert_allclose(crop[:3, :3], aff[:3, :3])
    sc = geometry.scale_affine(aff, (2, 2, 1))
    np.testing.assert_allclose(geometry.voxel_to_world(sc, [0, 0, 0]), geometry.voxel_to_world(aff, [0.5, 0.5, 0]))
    np.testing.assert_allclose(geometry.voxel_to_world(sc, [1, 1, 1]), geometry.voxel_to_world(aff, [2.5, 2.5, 1]))


# ---- the phantom through the engine -------------------------------------------------------------------

QUERY_POINTS = {
    "bone": syn.BONE_SPHERE.center_mm,
    "fat": syn.FAT_SPHERE.center_mm,
    "background": syn.CENTER_MM + np.array([-20.0, -20.0, 15.0]),            # water-like body
    "below_bone": syn.BONE_SPHERE.center_mm - [0, 0, syn.BONE_SPHERE.radius_mm + 3],
}
ABOVE_BONE = syn.BONE_SPHERE.center_mm + [0, 0, syn.BONE_SPHERE.radius_mm + 3]  # NOT below_bone


def test_phantom_fixtures_hold_the_same_voxels(phantoms):
    ras = phantoms["RAS"].array
    np.testing.assert_array_equal(phantoms["LPS"].array, ras[::-1, ::-1, :])
    np.testing.assert_array_equal(phantoms["PLI"].array, ras.transpose(1, 0, 2)[::-1, ::-1, ::-1])
    assert phantoms["PLI"].axcodes == ("P", "L", "I")
    assert phantoms["LPS"].axcodes == ("L", "P", "S")
    np.testing.assert_allclose(phantoms["RAS"].spacing_mm, [0.8, 1.3, 2.5])


@pytest.mark.parametrize("name", ORIENTATION_NAMES)
def test_query_world_points_same_organ_in_every_orientation(synthetic_engine, phantoms, name):
    vol = phantoms[name]
    pts = np.array(list(QUERY_POINTS.values()) + [ABOVE_BONE])
    res = synthetic_engine.query(vol, pts)
    assert res.names == tuple(QUERY_POINTS) + ("background",)
    assert res.probabilities.shape == (5, 4)
    np.testing.assert_allclose(res.probabilities.sum(1), 1, rtol=1e-5)
    assert np.all(res.probability > 0.99)
    # the voxel used is the canonical voxel nearest the point
    prep = synthetic_engine.prepare(vol)
    used = prep.canonical.voxel_to_world(res.voxels)
    assert np.all(np.abs(prep.canonical.world_to_voxel(used) - prep.canonical.world_to_voxel(pts)) <= 0.5 + 1e-9)


@pytest.mark.parametrize("name", ORIENTATION_NAMES)
def test_query_probabilities_match_the_analytic_model(synthetic_engine, phantoms, name):
    vol = phantoms[name]
    pts = np.array(list(QUERY_POINTS.values()))
    res = synthetic_engine.query(vol, pts)
    prep = synthetic_engine.prepare(vol)
    up_vox = np.rint(np.array([0, 0, syn.UP_MM]) @ np.linalg.inv(prep.canonical.affine[:3, :3]).T).astype(int)
    centre_hu = prep.canonical.array[tuple(res.voxels.T)]
    up_hu = prep.canonical.array[tuple((res.voxels + up_vox).T)]
    z = syn.analytic_logits(centre_hu, up_hu)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(res.probabilities, p, rtol=1e-4, atol=1e-6)
    assert [t[0] for t in res.top3_names] == list(QUERY_POINTS)
    assert res.top3_names[0] == ("bone", "background", "below_bone")  # the card's logit_bias breaks the tie
    assert np.all(np.diff(res.top3_probability, axis=1) <= 0)


@pytest.mark.parametrize("name", ["LPS", "PLI", "oblique"])
def test_query_voxel_indices_of_the_input_grid(synthetic_engine, phantoms, name):
    vol = phantoms[name]
    rng = np.random.default_rng(7)
    body = np.argwhere(vol.array > -500)
    ijk = body[rng.choice(len(body), 200, replace=False)]
    ijk = np.vstack([ijk, np.rint(vol.world_to_voxel(list(QUERY_POINTS.values()))).astype(int)])
    res = synthetic_engine.query(vol, ijk, voxel=True)
    prep = synthetic_engine.prepare(vol)
    # the canonical voxel used is the very voxel asked for
    np.testing.assert_allclose(prep.canonical.voxel_to_world(res.voxels), vol.voxel_to_world(ijk), atol=1e-6)
    hu = vol.array[tuple(ijk.T)]
    assert all(n == "bone" for n, h in zip(res.names, hu) if h == syn.BONE_HU)
    assert all(n == "fat" for n, h in zip(res.names, hu) if h == syn.FAT_HU)
    assert res.names[-4:] == tuple(QUERY_POINTS)


def test_query_outside_the_scan_raises(synthetic_engine, phantoms):
    from organscope.errors import InputError

    with pytest.raises(InputError, match="outside"):
        synthetic_engine.query(phantoms["PLI"], [syn.CENTER_MM + [0, 0, 60.0]])
    with pytest.raises(InputError, match="outside"):
        synthetic_engine.query(phantoms["PLI"], [[-1, 0, 0]], voxel=True)


@pytest.mark.parametrize("name", ORIENTATION_NAMES)
def test_segment_on_input_grid_with_expected_world_labels(segmentations, phantoms, name):
    vol, seg = phantoms[name], segmentations[name]
    assert seg.labels.shape == vol.shape
    np.testing.assert_array_equal(seg.labels.affine, vol.affine)
    assert seg.labels.array.dtype == np.uint8
    assert seg.names == {1: "bone", 2: "fat", 3: "below_bone"}
    expected = syn.expected_label(syn.voxel_world(vol.affine, vol.shape), margin_mm=2.5)
    sure = expected >= 0
    wrong = (seg.labels.array != expected) & sure
    assert not wrong.any(), f"{wrong.sum()} voxels wrong, e.g. at voxel {np.argwhere(wrong)[0]}"
    assert set(np.unique(seg.labels.array)) == {0, 1, 2, 3}


def test_segment_identical_for_the_same_voxels_stored_differently(segmentations):
    ras = segmentations["RAS"].labels.array
    np.testing.assert_array_equal(segmentations["LPS"].labels.array, ras[::-1, ::-1, :])
    np.testing.assert_array_equal(segmentations["PLI"].labels.array, ras.transpose(1, 0, 2)[::-1, ::-1, ::-1])


def test_segment_labelled_world_positions_agree_between_orientations(segmentations, phantoms):
    """Centroid and volume of each organ in world mm agree between all four grids (oblique included)."""
    stats = {}
    for name, seg in segmentations.items():
        w = syn.voxel_world(phantoms[name].affine, phantoms[name].shape)
        voxel_mm3 = np.prod(phantoms[name].spacing_mm)
        stats[name] = {c: (w[seg.labels.array == c].mean(0), (seg.labels.array == c).sum() * voxel_mm3)
                       for c in (1, 2, 3)}
    for name in ORIENTATION_NAMES[1:]:
        for c in (1, 2, 3):
            np.testing.assert_allclose(stats[name][c][0], stats["RAS"][c][0], atol=1.0)
            np.testing.assert_allclose(stats[name][c][1], stats["RAS"][c][1], rtol=0.05)
    # and where they should be: on the phantom's bone and fat voxels (to within half a final-level cell,
    # see test_segment_has_no_half_voxel_shift), the cap below the bone
    vol = phantoms["RAS"]
    w = syn.voxel_world(vol.affine, vol.shape)
    half_cell = 0.5 * vol.spacing_mm + 0.15
    assert np.all(np.abs(stats["RAS"][1][0] - w[vol.array == syn.BONE_HU].mean(0)) <= half_cell)
    assert np.all(np.abs(stats["RAS"][2][0] - w[vol.array == syn.FAT_HU].mean(0)) <= half_cell)
    assert stats["RAS"][3][0][2] < syn.BONE_SPHERE.center_mm[2] - syn.BONE_SPHERE.radius_mm + 2


@pytest.mark.xfail(strict=True, reason="src bug: at a level with an even step s the grid point g*s + s//2 is not the "
                   "centre of the cell [g*s, (g+1)*s) that refine.expand fills with its label, so label maps are "
                   "shifted by half a voxel towards -i/-j/-k (0.4 mm and 0.65 mm here)")
def test_segment_has_no_half_voxel_shift(segmentations, phantoms):
    vol, lab = phantoms["RAS"], segmentations["RAS"].labels.array
    w = syn.voxel_world(vol.affine, vol.shape)
    for c, hu in ((1, syn.BONE_HU), (2, syn.FAT_HU)):
        np.testing.assert_allclose(w[lab == c].mean(0), w[vol.array == hu].mean(0), atol=0.2)


def test_segment_refines_only_near_edges(segmentations, phantoms):
    t = segmentations["RAS"].timings_s
    assert 0 < t["points_classified"] < 0.05 * np.prod(phantoms["RAS"].shape)
    assert t["total"] > 0
