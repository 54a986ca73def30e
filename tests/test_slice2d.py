"""slice2d engine and the body crop: crop round trip, organ subsets, orientation, bad input; SYNTHETIC models."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import synthetic as syn
from helpers import synthetic_slice2d as syn2
from organscope.body import Crop, body_crop
from organscope.errors import InputError, ModelError
from organscope.volume import Volume


@pytest.fixture(scope="module")
def slice2d_synthetic(tmp_path_factory):
    pytest.importorskip("onnx")
    from organscope.engines.registry import get_engine

    return get_engine("slice2d", model=syn2.write_models(tmp_path_factory.mktemp("slice2d")), threads=1)


def test_body_crop_holds_the_body_and_round_trips(phantoms):
    vol = phantoms["RAS"]
    crop = body_crop(vol)
    body = vol.array > -500
    assert body[crop.slices].sum() == body.sum()  # nothing of the body is cut
    idx = np.argwhere(body)
    slack = np.ceil(5.0 / vol.spacing_mm) + 4  # the 5 mm margin plus the coarse mask's step (~4 mm)
    assert (np.array(crop.start) >= idx.min(0) - slack).all()  # and the air around it is dropped
    assert (np.array(crop.stop) <= idx.max(0) + 1 + slack).all()
    cut = crop.crop(vol)
    np.testing.assert_allclose(cut.voxel_to_world([[0, 0, 0]]), vol.voxel_to_world([crop.start]))
    back = crop.paste(cut.array, fill=-1000)
    np.testing.assert_array_equal(back[crop.slices], vol.array[crop.slices])
    assert (back[~np.pad(np.ones(crop.size, bool), [(a, n - b) for a, b, n in zip(crop.start, crop.stop, vol.shape)])]
            == -1000).all()


def test_crop_rejects_wrong_shapes():
    c = Crop((1, 1, 1), (3, 3, 3), (4, 4, 4))
    with pytest.raises(ValueError):
        c.paste(np.zeros((3, 3, 3)))
    assert c.with_axis(2, -5, 99).slices[2] == slice(0, 4)


@pytest.mark.parametrize("name", ["RAS", "LPS", "PLI", "oblique"])
def test_engine_finds_the_bone_ball_in_every_orientation(slice2d_synthetic, phantoms, name):
    vol = phantoms[name]
    seg = slice2d_synthetic.segment(vol, organs=["mandible"])
    assert seg.labels.shape == vol.shape
    np.testing.assert_array_equal(seg.labels.affine, vol.affine)
    assert set(seg.names.values()) == {"mandible"}
    mand = [i for i, n in seg.names.items() if n == "mandible"][0]
    world = syn.voxel_world(vol.affine, vol.shape)
    d = np.linalg.norm(world - syn.BONE_SPHERE.center_mm, axis=-1) - syn.BONE_SPHERE.radius_mm
    assert (seg.labels.array[d < -4] == mand).all()
    assert (seg.labels.array[d > 4] == 0).all()


def test_organ_subset_runs_only_those_models(slice2d_synthetic, phantoms):
    vol = phantoms["RAS"]
    both = slice2d_synthetic.segment(vol)
    assert set(both.names.values()) == {"mandible", "brainstem"}
    only = slice2d_synthetic.segment(vol, organs=["brainstem"])
    assert set(only.names.values()) == {"brainstem"}
    assert "mandible" not in only.timings_s
    bs = [i for i, n in only.names.items() if n == "brainstem"][0]
    assert set(np.unique(only.labels.array)) <= {0, bs}
    assert (only.labels.array == bs).sum() > 0


def test_unknown_organ_and_nan_are_clear_errors(slice2d_synthetic, phantoms):
    with pytest.raises(InputError, match="no organ liver"):
        slice2d_synthetic.segment(phantoms["RAS"], organs=["liver"])
    arr = phantoms["RAS"].array.astype(np.float32)
    arr[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        slice2d_synthetic.segment(Volume(arr, phantoms["RAS"].affine))


def test_missing_card_is_a_clear_error(tmp_path):
    from organscope.engines.slice2d import Slice2dEngine

    with pytest.raises(ModelError, match="not found"):
        Slice2dEngine(tmp_path / "none.json")


def test_keep_organs_after_a_whole_map_engine(phantoms):
    from organscope.segmentation import Segmentation

    vol = phantoms["RAS"]
    arr = np.zeros(vol.shape, np.uint8)
    arr[:10], arr[10:20] = 1, 2
    seg = Segmentation(vol.with_array(arr), {1: "brainstem", 2: "mandible"}, {})
    kept = seg.keep(["Mandible"])
    assert kept.names == {2: "mandible"}
    assert set(np.unique(kept.labels.array)) == {0, 2}
    with pytest.raises(ModelError, match="liver"):
        seg.keep(["liver"])
