"""The compiled descriptor gather against a slow pure-numpy reference."""
import numpy as np
import pytest

from organscope.sampling.gather import as_hu_int16, gather, gather_q8
from organscope.sampling.pattern import paper_pattern

SHAPE = (9, 11, 7)


def reference_gather(vol, centers, offsets):
    """Pure numpy, one sample at a time: HU / 128 clipped to [-4, 4], 0 outside the volume."""
    out = np.zeros((len(centers), len(offsets)), np.float32)
    for p, c in enumerate(centers):
        for k, o in enumerate(offsets):
            a, b, d = (int(c[0]) + int(o[0]), int(c[1]) + int(o[1]), int(c[2]) + int(o[2]))
            if 0 <= a < vol.shape[0] and 0 <= b < vol.shape[1] and 0 <= d < vol.shape[2]:
                out[p, k] = min(max(float(vol[a, b, d]) / 128.0, -4.0), 4.0)
    return out


def reference_q8(vol, centers, offsets):
    """int8 code: HU / 4 rounded half up (floor(HU/4 + 1/2)), clipped to [-128, 127]; 0 outside."""
    out = np.zeros((len(centers), len(offsets)), np.int8)
    for p, c in enumerate(centers):
        for k, o in enumerate(offsets):
            a, b, d = (int(c[0]) + int(o[0]), int(c[1]) + int(o[1]), int(c[2]) + int(o[2]))
            if 0 <= a < vol.shape[0] and 0 <= b < vol.shape[1] and 0 <= d < vol.shape[2]:
                out[p, k] = min(max(int(np.floor(int(vol[a, b, d]) / 4 + 0.5)), -128), 127)
    return out


def _case(rng):
    vol = rng.integers(-2000, 2000, SHAPE).astype(np.int16)
    vol.flat[:20] = [-32768, 32767, 511, 512, 513, -511, -512, -513, 2, -2, 6, -6, 510, 508, -514, -510,
                     1, -1, 0, 3]
    corners = np.array([[i, j, k] for i in (0, SHAPE[0] - 1) for j in (0, SHAPE[1] - 1) for k in (0, SHAPE[2] - 1)])
    centers = np.vstack([corners, rng.integers(0, SHAPE, size=(12, 3))]).astype(np.int32)
    offsets = np.vstack([rng.integers(-4, 5, size=(150, 3)), [[0, 0, 0], [-20, 0, 0], [0, 30, 0], [8, 10, 6]]])
    return vol, centers, offsets.astype(np.int32)


def test_gather_matches_reference(rng):
    vol, centers, offsets = _case(rng)
    got = gather(vol, centers, offsets)
    assert got.dtype == np.float32 and got.shape == (len(centers), len(offsets))
    np.testing.assert_array_equal(got, reference_gather(vol, centers, offsets))
    assert got.min() == -4.0 and got.max() == 4.0  # clipped at HU -512 / +512
    assert np.any(got == 0)                          # borders: outside samples are 0


def test_gather_with_the_paper_pattern(rng):
    vol = rng.integers(-1000, 1000, (20, 18, 16)).astype(np.int16)
    offsets = paper_pattern().offsets_vox(np.diag([4.0, 4.0, 2.5, 1.0]))
    centers = np.array([[0, 0, 0], [19, 17, 15], [10, 9, 8]], np.int32)
    np.testing.assert_array_equal(gather(vol, centers, offsets), reference_gather(vol, centers, offsets))


def test_gather_q8_matches_reference_and_gather(rng):
    vol, centers, offsets = _case(rng)
    q = gather_q8(vol, centers, offsets)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, reference_q8(vol, centers, offsets))
    f = gather(vol, centers, offsets)
    assert np.abs(q.astype(np.float32) / 32 - f).max() <= 1 / 32


def test_gather_reads_any_dtype_as_rounded_int16(rng):
    vol, centers, offsets = _case(rng)
    as_float = vol.astype(np.float32) + 0.3
    np.testing.assert_array_equal(gather(as_float, centers, offsets), gather(vol, centers, offsets))
    fortran = np.asfortranarray(vol)
    np.testing.assert_array_equal(gather(fortran, centers, offsets), gather(vol, centers, offsets))
    big = np.array([[[40000.0, -40000.0, 1.5]]])
    np.testing.assert_array_equal(as_hu_int16(big), [[[32767, -32768, 2]]])
    assert as_hu_int16(vol) is vol  # no copy of an int16 C array


def test_gather_into_out_buffer_and_no_points(rng):
    vol, centers, offsets = _case(rng)
    out = np.full((len(centers), len(offsets)), 9.0, np.float32)
    assert gather(vol, centers, offsets, out=out) is out
    np.testing.assert_array_equal(out, reference_gather(vol, centers, offsets))
    assert gather(vol, np.empty((0, 3), np.int32), offsets).shape == (0, len(offsets))


@pytest.mark.parametrize("bad", [[-1, 0, 0], [0, SHAPE[1], 0], [0, 0, SHAPE[2] + 5], [SHAPE[0], 0, 0]])
@pytest.mark.parametrize("fn", [gather, gather_q8])
def test_points_outside_the_volume_raise(rng, bad, fn):
    vol, centers, offsets = _case(rng)
    with pytest.raises(ValueError, match="inside"):
        fn(vol, np.vstack([centers, bad]), offsets)


def test_wrong_out_buffer_raises(rng):
    vol, centers, offsets = _case(rng)
    n, m = len(centers), len(offsets)
    for out in (np.empty((n, m), np.float64), np.empty((n + 1, m), np.float32), np.empty((n, m - 1), np.float32),
                np.empty((m, n), np.float32).T):
        with pytest.raises(ValueError, match="out must be"):
            gather(vol, centers, offsets, out=out)
    with pytest.raises(ValueError, match="out must be"):
        gather_q8(vol, centers, offsets, out=np.empty((n, m), np.float32))


def test_not_3d_raises():
    with pytest.raises(ValueError):
        gather(np.zeros((4, 4), np.int16), np.zeros((1, 3), np.int32), np.zeros((1, 3), np.int32))


@pytest.mark.parametrize("view", [lambda v: v.T, lambda v: v[::-1, :, ::-1], lambda v: v.transpose(2, 0, 1)[:, ::-1],
                                  lambda v: np.asfortranarray(v)[::-1]])
def test_gather_reads_permuted_and_flipped_views_in_place(rng, view):
    from organscope.sampling.gather import hu_int16, strided_layout

    base, _, offsets = _case(rng)
    vol = view(base)
    centers = rng.integers(0, vol.shape, size=(20, 3)).astype(np.int32)
    assert hu_int16(vol) is vol and strided_layout(vol) is not None  # no copy
    np.testing.assert_array_equal(gather(vol, centers, offsets), reference_gather(vol, centers, offsets))


def test_sampler_serial_and_parallel_kernels_agree(rng):
    from organscope.sampling.gather import KIND_U8, SERIAL_BELOW, Sampler, gather_u8

    vol = rng.integers(-1000, 1000, (20, 18, 16)).astype(np.int16)
    offsets = paper_pattern().offsets_vox(np.diag([4.0, 4.0, 2.5, 1.0]))
    s = Sampler(vol, offsets, KIND_U8)
    centers = rng.integers(0, vol.shape, size=(SERIAL_BELOW + 5, 3)).astype(np.int32)
    many = s(centers, np.empty((len(centers), len(offsets)), np.uint8))       # parallel kernel
    one = np.vstack([s(c[None], np.empty((1, len(offsets)), np.uint8)) for c in centers])  # serial kernel
    np.testing.assert_array_equal(many, one)
    np.testing.assert_array_equal(many, gather_u8(vol, centers, offsets))


@pytest.mark.parametrize("blocked_above", [0, 10**9])  # the tiled kernel (large volumes), numpy's copy
def test_contiguous_int16_copies_any_orientation(rng, monkeypatch, blocked_above):
    from organscope.sampling import gather as g

    monkeypatch.setattr(g, "BLOCKED_COPY_ABOVE", blocked_above)
    vol = rng.integers(-1000, 1000, (37, 19, 23)).astype(np.int16)
    for v in (vol.T, vol[::-1, :, ::-1].transpose(1, 2, 0), np.asfortranarray(vol)):
        c = g.contiguous_int16(v)
        assert c.flags.c_contiguous
        np.testing.assert_array_equal(c, v)
    assert g.contiguous_int16(vol) is vol
