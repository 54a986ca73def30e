"""The paper's 6561-sample pattern: layout, picture decoding and hand-computed voxel offsets."""
import numpy as np
import pytest

from organscope.sampling.pattern import paper_pattern

BLOCK = 729
GRID_STEPS = (2.0, 3.0, 5.0, 12.0, 28.0, 64.0)


@pytest.fixture(scope="module")
def pat():
    return paper_pattern()


def _index(pat, block, offset_mm):
    """Index of offset_mm inside `block` (exactly one)."""
    off = pat.offsets_mm[block * BLOCK:(block + 1) * BLOCK]
    hit = np.flatnonzero(np.all(off == np.asarray(offset_mm, float), axis=1))
    assert len(hit) == 1, (block, offset_mm, hit)
    return block * BLOCK + int(hit[0])


def test_size_and_unique_picture_positions(pat):
    assert pat.size == 6561
    assert pat.offsets_mm.shape == (6561, 3) and pat.image_rc.shape == (6561, 2)
    assert len({tuple(rc) for rc in pat.image_rc}) == 6561
    assert pat.image_rc.min() == 0 and pat.image_rc.max() == 80
    assert pat.name == "3.5d-planes4-grids2-3-5-12-28-64"
    assert pat.to_dict() == {"name": pat.name, "size": 6561}


def test_blocks_are_planes_then_grids(pat):
    off = pat.offsets_mm.reshape(9, BLOCK, 3)
    # planes at 4 mm: axial has z = 0, coronal y = 0, sagittal x = 0; 27 values -52..52 on the others
    for b, zero_axis in enumerate((2, 1, 0)):
        assert np.all(off[b, :, zero_axis] == 0)
        for ax in {0, 1, 2} - {zero_axis}:
            np.testing.assert_array_equal(np.unique(off[b, :, ax]), np.arange(-13, 14) * 4.0)
    for b, step in enumerate(GRID_STEPS, start=3):
        for ax in range(3):
            np.testing.assert_array_equal(np.unique(off[b, :, ax]), np.arange(-4, 5) * step)
        assert len({tuple(o) for o in off[b]}) == BLOCK
    # the centre (0, 0, 0) is once in every block; index 364 = 13 * 27 + 13 is the axial plane's centre
    assert np.all(off[0, 364] == 0)
    assert np.sum(np.all(pat.offsets_mm == 0, axis=1)) == 9


def test_decode_places_block_b_at_its_tile(pat):
    desc = np.repeat(np.arange(9), BLOCK).astype(np.float32)
    img = pat.decode_image(desc)
    assert img.shape == (81, 81) and img.dtype == np.float32
    for b in range(9):
        r, c = (b // 3) * 27, (b % 3) * 27
        assert np.all(img[r:r + 27, c:c + 27] == b), b


def test_decode_orientation_up_is_plus(pat):
    img_x = pat.decode_image(pat.offsets_mm[:, 0])
    img_y = pat.decode_image(pat.offsets_mm[:, 1])
    img_z = pat.decode_image(pat.offsets_mm[:, 2])
    # axial plane (tile 0): rows run anterior (+y) to posterior, columns right-to-left in x (-x to +x)
    assert np.all(img_y[0, 0:27] == 52) and np.all(img_y[26, 0:27] == -52)
    assert np.all(img_x[0:27, 0] == -52) and np.all(img_x[0:27, 26] == 52)
    # coronal (tile 1) and sagittal (tile 2): rows run superior (+z) to inferior
    assert np.all(img_z[0, 27:81] == 52) and np.all(img_z[26, 27:81] == -52)
    # 2 mm grid (tile 3 at rows 27.., cols 0..): 9x9 sub-tile s holds z slice s, anterior up
    assert img_z[27, 0] == -8 and img_y[27, 0] == 8 and img_x[27, 0] == -8
    assert img_z[27 + 26, 26] == 8 and img_y[27 + 26, 26] == -8 and img_x[27 + 26, 26] == 8


def test_decode_rejects_wrong_size(pat):
    with pytest.raises(ValueError):
        pat.decode_image(np.zeros(6560))


def test_paper_pattern_needs_six_grids():
    with pytest.raises(ValueError):
        paper_pattern(4.0, (2.0, 3.0))
    variant = paper_pattern(3.0, (1, 2, 4, 8, 16, 32))
    assert variant.size == 6561 and variant.offsets_mm[:, 0].max() == 128


def test_offsets_vox_hand_computed(pat):
    aff = np.diag([4.0, 4.0, 2.5, 1.0])
    vox = pat.offsets_vox(aff)
    assert vox.dtype == np.int32 and vox.shape == (6561, 3)
    assert tuple(vox[_index(pat, 3, (8, 0, 0))]) == (2, 0, 0)
    assert tuple(vox[_index(pat, 3, (0, 0, -8))]) == (0, 0, -3)       # -3.2 -> -3
    assert tuple(vox[_index(pat, 8, (256, 256, 256))]) == (64, 64, 102)  # 102.4 -> 102
    assert tuple(vox[_index(pat, 8, (-256, 64, -128))]) == (-64, 16, -51)  # -51.2 -> -51
    assert tuple(vox[_index(pat, 4, (3, -3, 3))]) == (1, -1, 1)        # 0.75 -> 1, 1.2 -> 1
    # translation does not matter
    aff2 = aff.copy()
    aff2[:3, 3] = [100, -50, 7]
    np.testing.assert_array_equal(pat.offsets_vox(aff2), vox)


def test_offsets_vox_flip_sign_on_lps_and_permute_on_pli(pat):
    ras = pat.offsets_vox(np.diag([4.0, 4.0, 2.5, 1.0]))
    lps = pat.offsets_vox(np.diag([-4.0, -4.0, 2.5, 1.0]))
    assert tuple(lps[_index(pat, 3, (8, 0, 0))]) == (-2, 0, 0)
    assert tuple(lps[_index(pat, 8, (256, 256, 256))]) == (-64, -64, 102)
    np.testing.assert_array_equal(lps, ras * [-1, -1, 1])
    pli = np.array([[0, -4.0, 0, 0], [-4.0, 0, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(pat.offsets_vox(pli), ras[:, [1, 0, 2]] * [-1, -1, -1])


def test_offsets_vox_oblique_and_transform(pat):
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.0, 2.0])
    i = _index(pat, 3, (8, 0, 0))
    # +8 mm along world x is 4 voxels along a direction rotated by -30 degrees in the grid
    assert tuple(pat.offsets_vox(aff)[i]) == (3, -2, 0)  # 4 cos 30 = 3.46, -4 sin 30 = -2
    # the transform (augmentation) is applied in mm first
    scaled = pat.offsets_vox(np.diag([2.0, 2.0, 2.0, 1]), transform=2 * np.eye(3))
    assert tuple(scaled[i]) == (8, 0, 0)


def test_mirror_index_gives_the_descriptor_of_the_mirrored_scan(pat):
    """descriptor[:, mirror_index] at a point == the descriptor of the mirror-image point in the scan flipped along
    R-L (the samples outside the volume included); the index is its own inverse and maps each offset to (-x, y, z)."""
    from organscope.sampling.gather import gather

    m = pat.mirror_index()
    assert np.array_equal(m[m], np.arange(pat.size))
    assert np.array_equal(pat.offsets_mm[m] * (-1, 1, 1), pat.offsets_mm)
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 1500, (41, 37, 29)).astype(np.int16)
    offsets = pat.offsets_vox(np.diag([2.0, 2.5, 3.0, 1.0]))
    pts = np.array([[3, 5, 7], [20, 18, 14], [40, 0, 28]], dtype=np.int32)
    flipped_pts = pts * (-1, 1, 1) + (vol.shape[0] - 1, 0, 0)
    assert np.array_equal(gather(vol, pts, offsets)[:, m], gather(vol[::-1], flipped_pts, offsets))


def test_mirror_index_refuses_an_asymmetric_pattern(pat):
    from organscope.sampling.pattern import Pattern

    skew = Pattern(pat.offsets_mm + (1.0, 0.0, 0.0), None, "skewed")
    with pytest.raises(ValueError, match="not left-right symmetric"):
        skew.mirror_index()
