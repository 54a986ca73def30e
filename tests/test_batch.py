"""Batch segmentation through the CLI: a folder or glob of scans (NIfTI files and a DICOM series folder) with
one corrupt file among them, on the local process pool and on a Dask LocalCluster; re-runs skip finished work.
Uses the SYNTHETIC analytic test model (tests/helpers/synthetic.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from organscope import batch
from organscope.cli import main
from organscope.io import load_labels, load_volume
from organscope.outputs import read_dicom_seg

SERIES = Path(__file__).parent / "data" / "dcmqi-3slice" / "ct-3slice"


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def failed_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("organscope: failed: ")]


@pytest.fixture
def scans(tmp_path, phantom_files):
    """in/: two phantoms (NIfTI), a DICOM series folder, a corrupt .nii.gz and a text file (not a scan)."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(phantom_files["RAS"], d / "ras.nii.gz")
    shutil.copy(phantom_files["PLI"], d / "pli.nii.gz")
    shutil.copytree(SERIES, d / "series")
    (d / "broken.nii.gz").write_bytes(Path(phantom_files["RAS"]).read_bytes()[:3000])
    (d / "notes.txt").write_text("not a scan")
    return d


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_folder_on_the_process_pool_corrupt_file_reported_rerun_skips(capsys, tmp_path, scans,
                                                                     synthetic_model_path, segmentations):
    out = tmp_path / "out"
    argv = ["segment", "-i", scans, "-o", out, "--model", synthetic_model_path, "--statistics", "--dicom-seg",
            "--no-progress", "--jobs", 2]
    rc, stdout, err = _run(capsys, *argv)
    assert rc == 1, err
    (line,) = failed_lines(err)
    assert str(scans / "broken.nii.gz") in line and "corrupt/truncated" in line
    assert err.strip().splitlines()[-1] == (f"{out}: 3 scan(s) segmented, 0 already done (skipped), 1 failed. "
                                            "No DICOM-SEG for 3 scan(s) that are not DICOM series.")
    assert sorted(p.name for p in out.iterdir()) == [
        "pli.json", "pli.nii.gz", "pli.statistics.json", "ras.json", "ras.nii.gz", "ras.statistics.json",
        "series.json", "series.nii.gz", "series.seg.dcm", "series.statistics.json"]  # nothing of broken, no temps
    for name in ("RAS", "PLI"):  # the same labels as a direct segmentation
        np.testing.assert_array_equal(load_labels(out / f"{name.lower()}.nii.gz").array,
                                      segmentations[name].labels.array)
    ct = load_volume(scans / "series")
    back = read_dicom_seg(out / "series.seg.dcm", ct)
    lab = load_labels(out / "series.nii.gz")
    assert set(back.names.values()) <= {"bone", "fat", "below_bone"} and back.names
    for n, name in back.names.items():
        value = {v: k for k, v in lab.meta["label_names"].items()}[name]
        np.testing.assert_array_equal(back.labels.array == n, lab.array == value)

    before = mtimes(out)
    rc, _, err = _run(capsys, *argv)  # re-run: only the broken scan is tried again
    assert rc == 1 and len(failed_lines(err)) == 1
    assert "0 scan(s) segmented, 3 already done (skipped), 1 failed." in err
    assert mtimes(out) == before

    (out / "ras.statistics.json").unlink()  # a missing output is written again, the others are kept
    (scans / "broken.nii.gz").unlink()
    rc, _, err = _run(capsys, *argv)
    assert rc == 0, err
    assert "1 scan(s) segmented, 2 already done (skipped), 0 failed." in err
    after = mtimes(out)
    assert (out / "ras.statistics.json").is_file()
    assert {k: v for k, v in after.items() if k != "ras.statistics.json"} == {
        k: v for k, v in before.items() if k != "ras.statistics.json"}


def test_glob_on_a_dask_local_cluster(capsys, tmp_path, scans, synthetic_model_path, segmentations):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        rc, _, err = _run(capsys, "segment", "-i", f"{scans}/*.nii.gz", "-o", out, "--model", synthetic_model_path,
                          "--masks", "--threads", 1, "--no-progress", "--scheduler", cl.scheduler_address)
    assert rc == 1, err
    (line,) = failed_lines(err)
    assert str(scans / "broken.nii.gz") in line
    assert f"{out}: 2 scan(s) segmented, 0 already done (skipped), 1 failed." in err
    assert sorted(p.name for p in out.iterdir()) == ["pli.json", "pli.nii.gz", "pli_masks", "ras.json",
                                                    "ras.nii.gz", "ras_masks"]
    labels = segmentations["RAS"].labels.array
    assert sorted(p.name for p in (out / "ras_masks").iterdir()) == ["below_bone.nii.gz", "bone.nii.gz",
                                                                     "fat.nii.gz"]
    for value, name in ((1, "bone"), (2, "fat"), (3, "below_bone")):
        np.testing.assert_array_equal(load_labels(out / "ras_masks" / f"{name}.nii.gz").array, labels == value)


def test_finding_scans(tmp_path, scans):
    assert batch.is_batch_input(scans) and batch.is_batch_input(f"{scans}/*.nii.gz")
    assert not batch.is_batch_input(scans / "series")  # a DICOM series folder is one scan
    assert not batch.is_batch_input(scans / "ras.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not batch.is_batch_input(empty)  # left to the one-scan path and its "no DICOM slices" message
    assert [p.name for p in batch.find_scans(scans)] == ["broken.nii.gz", "pli.nii.gz", "ras.nii.gz", "series"]
    assert batch.find_scans(f"{scans}/series/*.dcm") == [scans / "series"]  # DICOM files stand for their series


def test_bad_batch_requests_are_one_clear_line(capsys, tmp_path, scans, phantom_files, synthetic_model_path):
    shutil.copy(phantom_files["RAS"], tmp_path / "in" / "ras.nii")  # same output name as ras.nii.gz
    rc, _, err = _run(capsys, "segment", "-i", scans, "-o", tmp_path / "out", "--model", synthetic_model_path)
    assert rc == 2 and err.count("\n") == 1 and "would write the same outputs (ras.nii.gz)" in err
    (tmp_path / "in" / "ras.nii").unlink()
    rc, _, err = _run(capsys, "segment", "-i", scans, "-o", tmp_path / "out", "--statistics", "s.json")
    assert rc == 2 and "give --statistics without a name" in err
    rc, _, err = _run(capsys, "segment", "-i", f"{tmp_path}/nothing/*.nii.gz", "-o", tmp_path / "out")
    assert rc == 2 and "No scans found" in err
    assert not (tmp_path / "out").exists()


def test_masks_into_an_existing_folder_keep_other_files(capsys, tmp_path, phantom_files, synthetic_model_path,
                                                        segmentations):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "keep.txt").write_text("mine")
    rc, _, err = _run(capsys, "segment", "-i", phantom_files["LPS"], "-o", tmp_path / "l.nii.gz", "--model",
                      synthetic_model_path, "--masks", masks, "--threads", 1, "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in masks.iterdir()) == ["below_bone.nii.gz", "bone.nii.gz", "fat.nii.gz", "keep.txt"]
    mask = load_labels(masks / "fat.nii.gz")
    np.testing.assert_array_equal(mask.affine, load_volume(phantom_files["LPS"]).affine)
    np.testing.assert_array_equal(mask.array, segmentations["LPS"].labels.array == 2)


def test_batch_and_the_one_scan_cli_share_the_pipeline(capsys, tmp_path, phantom_files, synthetic_model_path):
    """batch.run_scan (a worker's job) and `organscope segment` on one scan write byte-identical outputs."""
    from organscope.outputs import OutputPaths
    from organscope.pipeline import SegmentOptions

    one, other = tmp_path / "cli", tmp_path / "batch"
    one.mkdir()
    other.mkdir()
    rc, _, err = _run(capsys, "segment", "-i", phantom_files["PLI"], "-o", one / "pli.nii.gz", "--model",
                      synthetic_model_path, "--threads", 1, "--no-progress", "--statistics", "--masks")
    assert rc == 0, err
    targets = OutputPaths(labels=other / "pli.nii.gz", statistics=other / "pli.statistics.json",
                          masks=other / "pli_masks")
    job = batch.ScanJob(str(phantom_files["PLI"]), targets, SegmentOptions(model=str(synthetic_model_path),
                                                                            threads=1))
    res = batch.run_scan(job)
    assert res.ok and res.message == "3 organ(s) found (below_bone, bone, fat)"
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
    assert "pli_masks/fat.nii.gz" in files
    for rel in files:
        if rel.endswith(".statistics.json"):  # it names its source, the same file
            assert (one / rel).read_text() == (other / rel).read_text()
        else:
            assert (one / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_scan_job_pickles_with_its_options(tmp_path):
    import pickle

    from organscope.outputs import OutputPaths
    from organscope.pipeline import SegmentOptions

    job = batch.ScanJob("a.nii.gz", OutputPaths(labels=tmp_path / "a.nii.gz"),
                        SegmentOptions(engine="cnn3d", organs=("mandible",), priors=True))
    assert pickle.loads(pickle.dumps(job)) == job


def test_a_run_never_writes_over_its_input(capsys, tmp_path, phantom_files, synthetic_model_path):
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(phantom_files["RAS"], scan)
    before = scan.read_bytes()
    rc, _, err = _run(capsys, "segment", "-i", scan, "-o", scan, "--model", synthetic_model_path, "--no-progress")
    assert rc == 2 and "would overwrite the input" in err
    assert scan.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_a_run_that_fails_half_way_leaves_no_new_output(tmp_path, phantom_files, synthetic_model_path, monkeypatch):
    import organscope.outputs as outputs
    from organscope.errors import InputError
    from organscope.outputs import OutputPaths
    from organscope.pipeline import SegmentOptions, run

    def broken(*a, **k):
        raise InputError("no preview today.")

    monkeypatch.setattr(outputs, "render_preview", broken)
    (tmp_path / "old.statistics.json").write_text("{}")  # there before the run: left alone
    targets = OutputPaths(labels=tmp_path / "new.nii.gz", statistics=tmp_path / "old.statistics.json",
                          preview=tmp_path / "new.png")
    with pytest.raises(InputError, match="no preview today"):
        run(phantom_files["RAS"], targets, SegmentOptions(model=str(synthetic_model_path), threads=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.statistics.json"]


def test_an_old_label_map_survives_when_its_json_cannot_be_written(capsys, tmp_path, phantom_files,
                                                                   synthetic_model_path):
    out = tmp_path / "x.nii.gz"
    out.write_bytes(b"the old label map")
    (tmp_path / "x.json").mkdir()  # the sidecar's place is taken by a folder holding a file: it cannot be replaced
    (tmp_path / "x.json" / "keep.txt").write_text("keep")
    rc, _, err = _run(capsys, "segment", "-i", phantom_files["RAS"], "-o", out, "--model", synthetic_model_path,
                      "--no-progress")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == b"the old label map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.nii.gz"]  # no temp file left


def test_a_rerun_redoes_outputs_that_do_not_read_back_whole(tmp_path, phantom_files, synthetic_model_path):
    from organscope.pipeline import SegmentOptions

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(phantom_files["RAS"], d / "ras.nii.gz")
    out = tmp_path / "out"
    opts = SegmentOptions(model=str(synthetic_model_path), threads=1)
    report = batch.run_batch(str(d), out, {"statistics", "preview"}, opts, jobs=1)
    assert len(report.ok) == 1
    jobs, done, _ = batch.plan(batch.find_scans(d), out, {"statistics", "preview"}, opts)
    assert (jobs, done) == ([], [d / "ras.nii.gz"])  # complete: skipped
    label_map = out / "ras.nii.gz"
    label_map.write_bytes(label_map.read_bytes()[:200])  # truncated, as by a crash of an older version
    png = out / "ras.preview.png"
    png.write_bytes(png.read_bytes()[:-20])
    (job,), done, _ = batch.plan(batch.find_scans(d), out, {"statistics", "preview"}, opts)
    assert done == [] and set(job.targets.wanted()) == {"labels", "preview"}  # the statistics JSON is whole


def test_an_unreachable_scheduler_makes_no_output_folder(capsys, tmp_path, phantom_files, synthetic_model_path):
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(phantom_files["RAS"], d / "ras.nii.gz")
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "segment", "-i", d, "-o", out, "--model", synthetic_model_path,
                      "--scheduler", f"tcp://127.0.0.1:{port}", "--no-progress")
    assert rc == 2 and "Cannot reach the Dask scheduler" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_batch_warns_per_scan_like_the_one_scan_cli_and_counts_them(capsys, tmp_path):
    """A chest scan among head-and-neck ones: batch prints the one-scan CLI's anatomy warning after the scan's
    name (the same words the sidecar's qc carries), nothing for the bundled head-and-neck scan, and the summary
    counts the warned scans. Shipped cascade model (fast on both scans)."""
    import json

    from organscope.io import save_volume

    from helpers.torso import torso

    d = tmp_path / "in"
    d.mkdir()
    save_volume(torso(), d / "chest.nii.gz")
    shutil.copy(Path(batch.__file__).parent / "data" / "okbp_validation_222.nii.gz", d / "hn.nii.gz")
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "segment", "-i", d, "-o", out, "--engine", "cascade", "--threads", 1, "--jobs", 1,
                      "--no-progress")
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("organscope: warning: ")]
    qc = json.loads((out / "chest.json").read_text())["qc"]
    assert qc["in_region"] is False and qc["warning"].startswith("This scan does not look like head-and-neck CT")
    assert warnings == [f"organscope: warning: chest: {qc['warning']}"], err
    assert json.loads((out / "hn.json").read_text())["qc"]["warning"] is None
    assert err.strip().splitlines()[-1] == (f"{out}: 2 scan(s) segmented, 0 already done (skipped), 0 failed, "
                                            "1 scan(s) with organs left out by the anatomy check.")

    # the one-scan CLI prints the same line without the name
    rc, _, err = _run(capsys, "segment", "-i", d / "chest.nii.gz", "-o", tmp_path / "one.nii.gz", "--engine",
                      "cascade", "--threads", 1, "--no-progress")
    assert rc == 0 and [ln for ln in err.splitlines() if ln.startswith("organscope: warning: ")] == [
        f"organscope: warning: {qc['warning']}"], err
