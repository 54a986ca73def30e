"""The PNG preview: size, legend (names in the PNG's text chunk, organ colours drawn), views' orientation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import organscope
from organscope.cli import main
from organscope.segmentation import Segmentation
from organscope.io import load_labels, load_volume
from organscope.organs import OPENKBP, get_organ
from organscope.outputs import render_preview
from organscope.volume import Volume

DATA = Path(organscope.__file__).parent / "data"


@pytest.fixture(scope="module")
def example():
    ct = load_volume(DATA / "okbp_validation_222.nii.gz")
    lab = load_labels(DATA / "okbp_validation_222_labels.nii.gz").array.astype(np.uint8)
    return ct, Segmentation(ct.with_array(lab), dict(OPENKBP.names), {})


def rgb_pixels(path) -> set:
    img = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return set(map(tuple, np.unique(img, axis=0)))


def test_png_size_legend_and_colours(tmp_path, example):
    ct, seg = example
    out = tmp_path / "p.png"
    legend = render_preview(ct, seg, out)
    expected = [get_organ(OPENKBP.names[v]).display_name for v in range(1, 8)]
    assert legend == expected and "Right parotid" in legend
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (1500, 560)
    assert json.loads(img.text["Description"]) == {"legend": expected}
    colours = rgb_pixels(out)
    for v in range(1, 8):  # every legend patch is drawn in the organ's colour
        assert get_organ(OPENKBP.names[v]).rgb in colours, OPENKBP.names[v]
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temp file left

    render_preview(ct, seg, tmp_path / "small.png", size_px=(900, 300))
    assert Image.open(tmp_path / "small.png").size == (900, 300)


def test_views_follow_the_world_not_the_storage_order(tmp_path):
    """A phantom stored with its first two axes reversed gives the same picture as stored RAS:
    the views are cut from the canonical grid, so storage order cannot flip them."""
    shape = (40, 30, 20)
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    i, j, k = np.indices(shape)
    ct = np.where((i - 20) ** 2 + (j - 15) ** 2 < 100, 40, -1000).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[25:32, 10:20, 5:15] = 1  # on the patient's right (x > centre)
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = [78.0, 58.0]  # same voxel centres, axes flipped
    a, b = tmp_path / "ras.png", tmp_path / "lps.png"
    names = {1: "liver"}
    render_preview(Volume(ct, ras), Segmentation(Volume(lab, ras), names, {}), a)
    render_preview(Volume(ct[::-1, ::-1].copy(), lps), Segmentation(Volume(lab[::-1, ::-1].copy(), lps), names, {}), b)
    pa, pb = (np.asarray(Image.open(p).convert("RGB")) for p in (a, b))
    np.testing.assert_array_equal(pa, pb)
    # radiological convention: the patient's right is on the left of the axial view. The CT is drawn in
    # grey (R = G = B), so coloured pixels are the overlay; the axial view is the first panel.
    first = pa[:, : int(0.3 * pa.shape[1])].astype(int)
    content = np.flatnonzero(first.sum(axis=(0, 2)) > 0)
    coloured = np.flatnonzero(((first[..., 0] != first[..., 1]) | (first[..., 1] != first[..., 2])).any(axis=0))
    assert content.size and coloured.size
    assert np.median(coloured) < (content.min() + content.max()) / 2


def test_cli_preview_and_empty_map(capsys, tmp_path, phantom_files, synthetic_model_path):
    rc = main(["segment", "-i", str(phantom_files["RAS"]), "-o", str(tmp_path / "l.nii.gz"), "--model",
               str(synthetic_model_path), "--preview", "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    img = Image.open(tmp_path / "l.preview.png")
    assert json.loads(img.text["Description"])["legend"] == ["Bone", "Fat", "Below bone"]
    ct = load_volume(phantom_files["RAS"])
    empty = Segmentation(ct.with_array(np.zeros(ct.shape, np.uint8)), {}, {})
    assert render_preview(ct, empty, tmp_path / "e.png") == []
    assert Image.open(tmp_path / "e.png").size == (1500, 560)
