"""Anatomy QC (organscope.qc): the scan's body region, per-organ plausibility, what is left out and where it is
written. Synthetic torso phantom (an elliptical body of ~600 cm2 with two lungs) and the bundled OpenKBP scan."""
from __future__ import annotations

import json

import numpy as np
import pytest

from organscope import cli
from organscope.io import load_labels, load_volume, save_volume
from organscope.outputs.statistics import statistics_document
from organscope.qc import HEAD_AND_NECK, OTHER, apply_qc, scan_region
from organscope.segmentation import Segmentation
from organscope.volume import Volume

from helpers.torso import torso

DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "organscope" / "data"
NAMES = {1: "brainstem", 2: "spinal_cord", 3: "parotid_right", 4: "parotid_left", 5: "esophagus", 6: "larynx",
         7: "mandible"}


@pytest.fixture(scope="module")
def hn():
    return load_volume(DATA / "okbp_validation_222.nii.gz"), load_labels(DATA / "okbp_validation_222_labels.nii.gz")


def fake_seg(vol: Volume, labels: np.ndarray) -> Segmentation:
    names = dict(NAMES)
    present = [names[int(v)] for v in np.unique(labels) if v]
    return Segmentation(vol.with_array(labels.astype(np.uint8)), names, confidence={n: 0.9 for n in present})


def test_region_of_torso_and_head_and_neck(hn):
    assert scan_region(torso()).region == OTHER
    assert scan_region(hn[0]).region == HEAD_AND_NECK


def test_out_of_region_organs_dropped_and_kept_marked():
    vol = torso()
    lab = np.zeros(vol.shape, np.uint8)
    lab[35:45, 25:35, 10:20] = 6  # a "larynx" in a chest
    seg = apply_qc(vol, fake_seg(vol, lab))
    assert seg.present() == [] and seg.qc.dropped() == ["larynx"]
    assert "not head-and-neck" in seg.qc.organs["larynx"].reasons[0]
    assert seg.qc.warning().startswith("This scan does not look like head-and-neck CT")
    assert "no head-and-neck organ is reported" in seg.qc.warning() and "\n" not in seg.qc.warning()
    kept = apply_qc(vol, fake_seg(vol, lab), keep_unverified=True)
    assert kept.present() == ["larynx"] and kept.qc.organs["larynx"].status == "unverified (kept)"


def test_bundled_head_and_neck_truth_is_all_kept_and_one_voxel_dropped(hn):
    vol, lab = hn
    seg = apply_qc(vol, fake_seg(vol, lab.array))
    assert seg.qc.unverified() == [] and len(seg.present()) == 7
    one = lab.array.copy()
    one[one == 5] = 0
    one[64, 64, 64] = 5  # a one-voxel "oesophagus"
    seg = apply_qc(vol, fake_seg(vol, one))
    assert "esophagus" not in seg.present() and seg.qc.dropped() == ["esophagus"]
    assert "esophagus" not in seg.confidence


def test_an_organ_below_the_models_confidence_threshold_is_left_out(hn, tmp_path):
    """qc_min_confidence (the sparse card's, chosen out of fold): a plausible organ with a lower confidence
    fails with that reason; without a threshold, or above it, it passes."""
    from dataclasses import replace

    from organscope.engines.registry import get_engine
    from organscope.qc import model_min_confidence

    vol, lab = hn
    seg = fake_seg(vol, lab.array)
    unsure = replace(seg, confidence={**seg.confidence, "larynx": 0.62})
    assert apply_qc(vol, unsure).qc.unverified() == []
    checked = apply_qc(vol, unsure, min_confidence=0.7)
    assert checked.qc.dropped() == ["larynx"] and "larynx" not in checked.present()
    assert "confidence 0.62 is below 0.70" in checked.qc.organs["larynx"].reasons[0]
    assert apply_qc(vol, seg, min_confidence=0.7).qc.unverified() == []
    assert model_min_confidence(get_engine("sparse")) == pytest.approx(0.7)
    # the default ensemble's threshold is fitted on its fused confidences; other members or weights have none
    from organscope.engines.ensemble import QC_MIN_CONFIDENCE, EnsembleEngine

    assert model_min_confidence(get_engine("ensemble")) == QC_MIN_CONFIDENCE
    assert model_min_confidence(EnsembleEngine(members=[("sparse", 0.5), ("cnn3d", 0.5)])) is None
    assert model_min_confidence(EnsembleEngine(members=[("sparse", 7), ("cnn3d", 3)])) == QC_MIN_CONFIDENCE
    # the same weights on models that are not the shipped ones (a copy elsewhere, as a fold model would be)
    import shutil

    from organscope.modelcard import MODELS_DIR

    for ext in (".onnx", ".json"):
        shutil.copy(MODELS_DIR / f"sparse_openkbp{ext}", tmp_path / f"sparse_openkbp{ext}")
    other = {"sparse": tmp_path / "sparse_openkbp.onnx", "cnn3d": None}
    fold_models = EnsembleEngine(members=[("sparse", 0.7), ("cnn3d", 0.3)],
                                 engines=lambda n, threads=None: get_engine(n, model=other[n], threads=threads))
    assert model_min_confidence(fold_models) is None


def test_shipped_engine_keeps_every_organ_of_the_bundled_scan(hn):
    from organscope.pipeline import SegmentOptions, segment_volume

    seg = segment_volume(hn[0], SegmentOptions(engine="cascade", threads=1))
    assert seg.qc.scan.region == HEAD_AND_NECK and seg.qc.unverified() == []
    assert set(seg.present()) == set(seg.qc.organs)


def test_statistics_carry_confidence_and_cut_off(hn):
    vol, lab = hn
    arr = lab.array.copy()
    k = int(np.argwhere(arr == 2)[:, 2].max())  # OpenKBP: axis 2 runs superior -> inferior
    arr[:, :, k:][np.broadcast_to((arr[:, :, k] == 2)[:, :, None], arr[:, :, k:].shape)] = 2  # cord to the border
    seg = apply_qc(vol, fake_seg(vol, arr))
    doc = statistics_document(vol, seg)
    by = {o["name"]: o for o in doc["organs"]}
    assert by["brainstem"]["confidence"] == 0.9 and by["brainstem"]["cut_off"] is False
    assert by["spinal_cord"]["cut_off"] is True and by["brainstem"]["status"] == "verified"
    assert "spinal_cord" in seg.qc.cut_off()


def test_cli_sidecar_warning_and_keep_unverified(tmp_path, capsys):
    vol = torso()
    scan = tmp_path / "chest.nii.gz"
    save_volume(vol, scan)
    out = tmp_path / "labels.nii.gz"
    assert cli.main(["segment", "-i", str(scan), "-o", str(out), "--engine", "cascade", "--threads", "1",
                     "--statistics"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("organscope: warning")]
    assert err == ["organscope: warning: This scan does not look like head-and-neck CT (no head or neck: its "
                   "smallest body cross-section is 637 cm2, a neck's is under 300 cm2); no head-and-neck organ is "
                   "reported."]
    side = json.loads((tmp_path / "labels.json").read_text())
    assert side["qc"]["in_region"] is False and side["confidence"] == {}
    assert all(o["status"] == "dropped" and o["reasons"] for o in side["qc"]["organs"].values())
    assert not load_labels(out).array.any()
    out2 = tmp_path / "kept.nii.gz"
    assert cli.main(["segment", "-i", str(scan), "-o", str(out2), "--engine", "cascade", "--threads", "1",
                     "--keep-unverified"]) == 0
    side2 = json.loads((tmp_path / "kept.json").read_text())
    assert side2["qc"]["keep_unverified"] is True
    assert all(o["status"] == "unverified (kept)" for o in side2["qc"]["organs"].values())
    assert set(side2["qc"]["organs"]) == {n for n, v in side2["labels"].items() if v and (load_labels(out2).array == v).any()}


def test_query_unknown_outside_region(tmp_path):
    import organscope.api as api

    vol = torso()
    res = api.query(vol, [[0.0, 0.0, 100.0]], threads=1)
    assert res.names == ("unknown",)
    region, check = api.query_check(vol, threads=1)
    assert region == HEAD_AND_NECK and check.region == OTHER
    assert api.query(vol, [[0.0, 0.0, 100.0]], threads=1, keep_unverified=True).names[0] != "unknown"


def test_locate_reports_not_present_with_reason(tmp_path, capsys):
    scan = tmp_path / "chest.nii.gz"
    save_volume(torso(), scan)
    assert cli.main(["locate", str(scan), "--json", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert not any(o["present"] for o in doc["organs"].values())
    assert len([line for line in captured.err.splitlines() if line.startswith("organscope: warning")]) == 1


def test_models_say_their_region(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("region=head-and-neck" in line and "mandible" in line for line in lines)
