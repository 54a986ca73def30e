"""organscope locate with the sparse-grid and heat-map localisers, on the bundled OpenKBP example scan (shipped sparse model):
JSON format, boxes in world mm and voxels under flipped axes, an organ cut out of the scan reported absent."""
from __future__ import annotations

import json

import numpy as np
import pytest

from organscope.modelcard import MODELS_DIR
from organscope.io import load_labels, load_volume
from organscope.volume import Volume

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "organscope" / "data"
SCAN = DATA / "okbp_validation_222.nii.gz"
LABELS = DATA / "okbp_validation_222_labels.nii.gz"

pytestmark = pytest.mark.skipif(not (MODELS_DIR / "sparse_openkbp.onnx").exists(), reason="no shipped sparse model")


@pytest.fixture(scope="module")
def scan():
    return load_volume(SCAN)


@pytest.fixture(scope="module", params=["sparse_grid", "heatmap"])
def locate_fn(request):
    """Each localiser as a function volume -> {organ: OrganLocation}; the heat-map one when its model ships."""
    from organscope.engines.registry import get_localizer

    if request.param == "heatmap":
        from organscope.localize.heatmap import DEFAULT_MODEL
        from organscope.modelcard import MODELS_DIR

        if not (MODELS_DIR / f"{DEFAULT_MODEL}.onnx").exists():
            pytest.skip("no shipped heat-map model")
    return get_localizer(request.param, threads=2).locate


@pytest.fixture(scope="module")
def located(scan, locate_fn):
    return locate_fn(scan)


def test_every_organ_found_and_its_box_holds_it(scan, located):
    labels = load_labels(LABELS) if LABELS.exists() else None
    if labels is None:
        pytest.skip("bundled labels missing")
    from organscope.organs import OPENKBP

    for name, loc in located.items():
        assert loc.present, name
        lo, hi = np.array(loc.box_voxels)
        mask = labels.array == OPENKBP.ids[name]
        inside = mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1].sum()
        assert inside / mask.sum() > 0.9, (name, inside / mask.sum())
        # the centroid lies within the world box
        assert np.all(np.array(loc.box_mm[0]) - 1e-6 <= loc.centroid_mm)
        assert np.all(np.array(loc.centroid_mm) <= np.array(loc.box_mm[1]) + 1e-6)


def test_flipped_axes_give_the_same_world_boxes_and_mirrored_voxel_boxes(scan, located, locate_fn):
    locate = locate_fn

    flipped_aff = scan.affine.copy()
    n0 = scan.shape[0]
    flipped_aff[:3, 3] = scan.affine[:3, 3] + (n0 - 1) * scan.affine[:3, 0]
    flipped_aff[:3, 0] = -scan.affine[:3, 0]
    flipped = Volume(np.ascontiguousarray(scan.array[::-1]), flipped_aff)
    other = locate(flipped)
    for name, loc in located.items():
        o = other[name]
        np.testing.assert_allclose(o.box_mm, loc.box_mm, atol=1e-6)
        np.testing.assert_allclose(o.centroid_mm, loc.centroid_mm, atol=1e-6)
        (a0, a1), (b0, b1) = np.array(loc.box_voxels), np.array(o.box_voxels)
        assert b0[0] == n0 - 1 - a1[0] and b1[0] == n0 - 1 - a0[0]
        np.testing.assert_array_equal([a0[1:], a1[1:]], [b0[1:], b1[1:]])


def test_an_organ_cut_out_of_the_scan_is_absent(scan, located, locate_fn):
    locate = locate_fn

    # OpenKBP is stored P-L-I: axis 2 runs superior -> inferior; keep only what lies below the larynx's box
    low = located["larynx"].box_voxels[1][2] + 5
    cut = Volume(np.ascontiguousarray(scan.array[:, :, low:]),
                 scan.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, low], [0, 0, 0, 1.0]]))
    res = locate(cut)
    for organ in ("brainstem", "mandible", "parotid_left", "parotid_right"):
        assert not res[organ].present, organ
        assert res[organ].to_dict()["centroid_mm"] is None


def test_cli_json_has_the_documented_shape(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "boxes.json"
    p = subprocess.run([sys.executable, "-m", "organscope.cli", "locate", str(SCAN), "--json", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert json.loads(out.read_text()) == doc
    assert set(doc) == {"organs"}
    for name, d in doc["organs"].items():
        assert set(d) == {"present", "centroid_mm", "box_mm", "box_voxels", "confidence"}
        if d["present"]:
            assert len(d["centroid_mm"]) == 3 and np.array(d["box_mm"]).shape == (2, 3)
            assert np.array(d["box_voxels"]).shape == (2, 3) and 0 <= d["confidence"] <= 1
