"""Per-organ statistics against values worked out by hand on small synthetic volumes with known affines
(anisotropic, flipped axes, oblique), and the --statistics JSON written by the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.cli import main
from organscope.segmentation import Segmentation
from organscope.errors import InputError
from organscope.io import load_labels, load_volume
from organscope.outputs import organ_statistics, write_statistics
from organscope.volume import Volume

# i runs to patient's left (x decreasing), j anterior, k inferior: spacing 0.8 x 1.5 x 2.5 mm
AFFINE = np.array([[-0.8, 0.0, 0.0, 30.0],
                   [0.0, 1.5, 0.0, -40.0],
                   [0.0, 0.0, -2.5, 100.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (20, 16, 12)


def hand_made():
    i, j, k = np.indices(SHAPE)
    ct = Volume((10 * i + j - 3 * k).astype(np.int16), AFFINE)
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:9, 2:7, 1:5] = 1  # a 6 x 5 x 4 box: 120 voxels
    lab[15, 10, 7] = 4  # one voxel
    lab[12, 12, 2:4] = 4  # plus two: 3 voxels of label 4
    return ct, Segmentation(ct.with_array(lab), {1: "liver", 4: "spleen", 7: "heart"}, {})


def test_box_and_scattered_voxels_by_hand():
    ct, seg = hand_made()
    stats = organ_statistics(ct, seg)
    assert [s.name for s in stats] == ["liver", "spleen"]  # heart (7) is absent, so not listed
    liver, spleen = stats
    assert (liver.label, liver.voxels, spleen.voxels) == (1, 120, 3)
    voxel_mm3 = 0.8 * 1.5 * 2.5  # = 3.0 mm^3
    assert liver.volume_ml == pytest.approx(120 * voxel_mm3 / 1000)  # 0.36 ml
    assert spleen.volume_ml == pytest.approx(3 * voxel_mm3 / 1000)
    # HU = 10 i + j - 3 k over i in 3..8, j in 2..6, k in 1..4: means 55 + 4 - 7.5, variances add (independent)
    assert liver.mean_hu == pytest.approx(10 * 5.5 + 4 - 3 * 2.5)
    var = 100 * np.var(np.arange(3, 9)) + np.var(np.arange(2, 7)) + 9 * np.var(np.arange(1, 5))
    assert liver.sd_hu == pytest.approx(math.sqrt(var))
    spleen_hu = [150 + 10 - 21, 120 + 12 - 6, 120 + 12 - 9]
    assert spleen.mean_hu == pytest.approx(np.mean(spleen_hu))
    assert spleen.sd_hu == pytest.approx(np.std(spleen_hu))
    # centroid: box centre voxel (5.5, 4, 2.5) -> x = 30 - 0.8 * 5.5, y = -40 + 1.5 * 4, z = 100 - 2.5 * 2.5
    assert liver.centroid_mm == pytest.approx((30 - 4.4, -40 + 6.0, 100 - 6.25))
    c = np.mean([[15, 10, 7], [12, 12, 2], [12, 12, 3]], axis=0)
    assert spleen.centroid_mm == pytest.approx((30 - 0.8 * c[0], -40 + 1.5 * c[1], 100 - 2.5 * c[2]))


def test_oblique_sphere_volume_and_centroid():
    """A 15 mm sphere sampled on the oblique synthetic grid: volume within 2 % of 4/3 pi r^3, centroid at
    the centre within a tenth of a voxel."""
    aff = syn.oblique_affine(25.0)
    world = syn.voxel_world(aff, syn.SHAPE)
    centre = syn.CENTER_MM + np.array([3.0, -4.0, 2.0])
    inside = np.linalg.norm(world - centre, axis=-1) <= 15.0
    ct = Volume(np.where(inside, 40, -1000).astype(np.int16), aff)
    seg = Segmentation(ct.with_array(inside.astype(np.uint8)), {1: "bladder"}, {})
    (s,) = organ_statistics(ct, seg)
    assert s.name == "bladder" and s.voxels == int(inside.sum())
    assert s.volume_ml == pytest.approx(4 / 3 * math.pi * 15.0**3 / 1000, rel=0.02)
    assert (s.mean_hu, s.sd_hu) == (40.0, 0.0)
    np.testing.assert_allclose(s.centroid_mm, centre, atol=0.1 * syn.SPACING_MM.min())


def test_json_file_and_cli(capsys, tmp_path, phantom_files, synthetic_model_path):
    ct, seg = hand_made()
    doc = write_statistics(ct, seg, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == doc
    assert doc["voxel_volume_mm3"] == pytest.approx(3.0)
    assert [o["name"] for o in doc["organs"]] == ["liver", "spleen"] and doc["organs"][0]["voxels"] == 120

    out = tmp_path / "cli"
    out.mkdir()
    rc = main(["segment", "-i", str(phantom_files["PLI"]), "-o", str(out / "lab.nii.gz"), "--model",
               str(synthetic_model_path), "--statistics", str(out / "stats.json"), "--threads", "1",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "stats.json").read_text())
    by_name = {o["name"]: o for o in doc["organs"]}
    assert set(by_name) == {"bone", "fat", "below_bone"}
    # the bone sphere (radius 13 mm) is found: volume near 4/3 pi r^3, centroid near its centre
    bone = by_name["bone"]
    assert bone["volume_ml"] == pytest.approx(4 / 3 * math.pi * 13.0**3 / 1000, rel=0.1)
    np.testing.assert_allclose(bone["centroid_mm"], syn.BONE_SPHERE.center_mm, atol=1.5)
    # and every figure is what plain numpy gives on the written label map and the scan
    ct = load_volume(phantom_files["PLI"])
    lab = load_labels(out / "lab.nii.gz").array
    for value, name in ((1, "bone"), (2, "fat"), (3, "below_bone")):
        hu = ct.array[lab == value].astype(float)
        o = by_name[name]
        assert o["voxels"] == hu.size
        assert o["volume_ml"] == pytest.approx(hu.size * np.prod(ct.spacing_mm) / 1000)
        assert (o["mean_hu"], o["sd_hu"]) == (pytest.approx(hu.mean()), pytest.approx(hu.std()))
        centre = np.argwhere(lab == value).mean(axis=0)
        np.testing.assert_allclose(o["centroid_mm"], ct.affine[:3, :3] @ centre + ct.affine[:3, 3], atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["lab.json", "lab.nii.gz", "stats.json"]


def test_label_map_off_the_grid_is_refused():
    ct, seg = hand_made()
    other = Segmentation(Volume(seg.labels.array[:, :, :6].copy(), AFFINE), seg.names, {})
    with pytest.raises(InputError, match="not on the scan's grid"):
        organ_statistics(ct, other)
    unnamed = Segmentation(seg.labels, {1: "liver"}, {})
    with pytest.raises(InputError, match="no organ name"):
        organ_statistics(ct, unnamed)
