"""CLI smoke tests through organscope.cli.main (in process) with the SYNTHETIC analytic test model, plus one real
subprocess."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.cli import main

BONE = syn.BONE_SPHERE.center_mm
FAT = syn.FAT_SPHERE.center_mm
WATER = syn.CENTER_MM + np.array([-20.0, -20.0, 15.0])
BELOW = BONE - [0, 0, syn.BONE_SPHERE.radius_mm + 3]


def _pt(p):
    return ",".join(f"{v:g}" for v in p)


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_in_a_subprocess():
    exe = Path(sys.executable).with_name("organscope")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "organscope.cli", "--help"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for word in ("segment", "query", "evaluate", "models"):
        assert word in res.stdout
    assert res.stderr == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("organscope ")


@pytest.mark.parametrize("name", ["PLI", "oblique"])
def test_segment_writes_labels_on_the_input_grid(capsys, tmp_path, phantom_files, phantoms, synthetic_model_path,
                                                 segmentations, name):
    out = tmp_path / "out.nii.gz"
    rc, stdout, err = _run(capsys, "segment", "-i", phantom_files[name], "-o", out, "--model", synthetic_model_path,
                           "--threads", 1, "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.nii.gz"]  # no temp files left
    img = nib.load(str(out))
    src = nib.load(str(phantom_files[name]))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)
    assert img.get_data_dtype() == np.uint8
    lab = np.asarray(img.dataobj)
    np.testing.assert_array_equal(lab, segmentations[name].labels.array)
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["labels"] == {"background": 0, "bone": 1, "fat": 2, "below_bone": 3}
    # --model without --engine: the model card's engine, recorded with the model beside the labels
    assert sidecar["engine"] == "sparse" and sidecar["model"] == str(synthetic_model_path)
    assert set(sidecar["confidence"]) == {"bone", "fat", "below_bone"} and sidecar["qc"]["dropped"] == []
    assert stdout == ""
    assert f"{out}: 3 organ(s) found (below_bone, bone, fat);" in err
    assert len(err.strip().splitlines()) == 1


def test_query_prints_organ_and_top3(capsys, phantom_files, synthetic_model_path):
    rc, out, err = _run(capsys, "query", phantom_files["PLI"], f"--point={_pt(BONE)}", f"--point={_pt(FAT)}",
                        f"--point={_pt(WATER)}", f"--point={_pt(BELOW)}", "--model", synthetic_model_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["x", "y", "z", "(mm)", "organ", "p", "top-3"]
    assert len(lines) == 5
    assert lines[1] == (f"{BONE[0]:8.1f} {BONE[1]:8.1f} {BONE[2]:8.1f}        bone" + " " * 14 + "1.000  "
                        "bone 1.00, background 0.00, below_bone 0.00")
    assert lines[2].split()[3:6] == ["fat", "1.000", "fat"]
    assert [ln.split()[3] for ln in lines[1:]] == ["bone", "fat", "background", "below_bone"]
    assert err == ""


def test_query_negative_point_without_equals_sign(capsys, phantom_files, synthetic_model_path):
    rc, out, err = _run(capsys, "query", phantom_files["RAS"], "--point", _pt(FAT), "--model", synthetic_model_path)
    assert rc == 0 and out.splitlines()[1].split()[3] == "fat"


def test_query_with_a_model_of_an_engine_without_point_queries_says_so(capsys, phantom_files):
    """--model names the engine, as for segment: a cnn3d model is refused in one sentence naming the engines that
    answer point queries (it was loaded as a sparse model, which failed on a missing card field)."""
    rc, out, err = _run(capsys, "query", phantom_files["RAS"], "--point", _pt(FAT), "--model", "cnn3d_openkbp")
    assert rc != 0 and out == ""
    assert "The cnn3d engine does not answer point queries; use one of sparse." in err
    assert len(err.strip().splitlines()) == 1


def test_query_json(capsys, phantom_files, synthetic_model_path):
    rc, out, err = _run(capsys, "query", phantom_files["LPS"], f"--point={_pt(BONE)}", f"--point={_pt(BELOW)}",
                        "--json", "--model", synthetic_model_path)
    assert rc == 0, err
    data = json.loads(out)
    pts = data["points"]
    assert [p["organ"] for p in pts] == ["bone", "below_bone"]
    assert pts[0]["unit"] == "mm"
    np.testing.assert_allclose(pts[0]["point"], BONE)
    assert [t["organ"] for t in pts[0]["top3"]] == ["bone", "background", "below_bone"]
    assert pts[0]["probability"] == 1.0
    assert all(set(t) == {"organ", "probability"} for p in pts for t in p["top3"])


def test_query_csv_with_several_points(capsys, tmp_path, phantom_files, synthetic_model_path):
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("x,y,z\n# a comment\n" + "\n".join(_pt(p) for p in (FAT, WATER, BONE)) + "\n\n")
    rc, out, err = _run(capsys, "query", phantom_files["oblique"], "--csv", csv_file, f"--point={_pt(BELOW)}",
                        "--json", "--model", synthetic_model_path)
    assert rc == 0, err
    # --point values first, then the file's
    assert [p["organ"] for p in json.loads(out)["points"]] == ["below_bone", "fat", "background", "bone"]


def test_query_voxel_on_a_flipped_grid(capsys, phantom_files, phantoms, synthetic_model_path):
    vol = phantoms["PLI"]
    ijk = np.rint(vol.world_to_voxel([BONE, FAT])).astype(int)
    assert vol.array[tuple(ijk[0])] == syn.BONE_HU and vol.array[tuple(ijk[1])] == syn.FAT_HU
    rc, out, err = _run(capsys, "query", phantom_files["PLI"], "--voxel", "--point", _pt(ijk[0]),
                        "--point", _pt(ijk[1]), "--model", synthetic_model_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert "(vox)" in lines[0]
    assert [ln.split()[3] for ln in lines[1:]] == ["bone", "fat"]
    assert lines[1].split()[:3] == [f"{v:.1f}" for v in ijk[0]]


def test_models_lists_shipped_cards(capsys):
    rc, out, err = _run(capsys, "models")
    assert rc == 0 and err == ""
    import json

    from organscope.modelcard import MODELS_DIR

    lines = out.splitlines()
    # one line per card, then the ensemble (no card: its members' shipped models, its weights and figures)
    assert len(lines) == len(list(MODELS_DIR.glob("*.json"))) + 1
    ensemble = lines.pop()
    assert ensemble.startswith("ensemble (the default segmentation engine): engine=ensemble region=head-and-neck")
    assert " members=0.7 sparse_openkbp + 0.3 cnn3d_openkbp out_of_fold_mean_dice=0.7" in ensemble
    for line in lines:
        name = line.split(":")[0]
        card = json.loads((MODELS_DIR / f"{name}.json").read_text())
        assert f" engine={card['engine']} " in line and " organs=" in line
        if card["engine"] == "locate":
            assert "median_centroid_error_mm=" in line
        else:  # every shipped segmentation model has its validation (or, trained on every case, out-of-fold) Dice
            val = card["validation"]
            kind = "out_of_fold" if "folds" in val else "estimated" if "estimate_from" in val else "validation"
            assert f" {kind}_mean_dice=0." in line


def test_evaluate_two_tiny_dirs(capsys, tmp_path):
    from organscope.io import save_labels
    from organscope.volume import Volume

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    grid = Volume(np.zeros((10, 10, 10), np.int16), np.diag([2.0, 1.0, 3.0, 1.0]))
    a = np.zeros(grid.shape, np.uint8)
    a[2:6, 2:6, 2:6] = 1
    a[7:9, 7:9, 7:9] = 2
    names = {1: "brainstem", 2: "spinal_cord"}
    save_labels(grid, a, ref / "case1.nii.gz", names)
    save_labels(grid, a, pred / "case1.nii.gz", names)
    rc, out, err = _run(capsys, "evaluate", pred, ref, "--out", tmp_path / "report")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["organ", "n", "Dice", "Jaccard", "NSD@2mm", "HD95", "mm"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if ln.strip()}
    assert rows["brainstem"][:3] == ["brainstem", "1", "1.000"]
    assert rows["spinal_cord"][:3] == ["spinal_cord", "1", "1.000"]
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "report.json").is_file()


# --- the parser: help on every option, engines listed, bad values in one line ------------------------------------

def _walk(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)


def test_every_option_of_every_command_has_help():
    from organscope.cli import build_parser

    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in _walk(build_parser()) for a in p._actions
               if not a.help and a.dest != "command"]
    assert missing == []


def test_engine_help_lists_every_engine_and_choices_are_checked(capsys):
    from organscope.engines.registry import ENGINE_INFO

    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, text in ENGINE_INFO.items():
        assert f"{name}: {' '.join(text.split())}" in out
    rc, out, err = _run_exit(capsys, "segment", "-i", "x.nii.gz", "-o", "y.nii.gz", "--engine", "nope")
    assert rc == 2 and err.startswith("organscope: error: argument --engine: invalid choice: 'nope'")


def _run_exit(capsys, *argv):
    """main() for argument errors, which exit through argparse."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _one_error_line(rc, out, err):
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("organscope: error: "), err


@pytest.mark.parametrize("argv", [
    ["segment", "-i", "x.nii.gz", "-o", "y.nii.gz", "--threads", "0"],
    ["segment", "-i", "x.nii.gz", "-o", "y.nii.gz", "--threads=-3"],
    ["query", "x.nii.gz", "--point", "1,2,3", "--threads", "0"],
    ["locate", "x.nii.gz", "--threads", "0"],
])
def test_threads_below_one_refused(capsys, argv):
    rc, out, err = _run_exit(capsys, *argv)
    _one_error_line(rc, out, err)
    assert "argument --threads: must be at least 1" in err


@pytest.mark.parametrize("value", ["0", "-8", "nan", "inf", "eight"])
def test_locate_level_mm_must_be_positive_and_finite(capsys, value):
    rc, out, err = _run_exit(capsys, "locate", "x.nii.gz", f"--level-mm={value}")
    _one_error_line(rc, out, err)
    assert "argument --level-mm: must be a positive number of millimetres" in err


def test_an_expanded_glob_gets_a_hint_to_quote_it(capsys, tmp_path, phantom_files):
    rc, out, err = _run_exit(capsys, "segment", "-i", phantom_files["RAS"], phantom_files["PLI"], phantom_files["LPS"],
                             "-o", tmp_path / "out")
    _one_error_line(rc, out, err)
    assert "unrecognized arguments" in err and "quote the pattern" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["--organs", "fat,  bone"], ["--organs=fat,bone"]])
def test_organ_lists_take_commas_and_spaces_after_them(capsys, tmp_path, phantom_files, synthetic_model_path, argv):
    rc, _, err = _run(capsys, "segment", "-i", phantom_files["RAS"], "-o", tmp_path / "o.nii.gz", "--model",
                      synthetic_model_path, "--threads", 1, "--no-progress", *argv)
    assert rc == 0, err
    assert "2 organ(s) found (bone, fat)" in err


def test_organ_list_split_by_the_shell_gets_a_hint(capsys, tmp_path, phantom_files):
    rc, out, err = _run_exit(capsys, "segment", "-i", phantom_files["RAS"], "-o", tmp_path / "o.nii.gz",
                             "--organs", "fat,", "bone")
    _one_error_line(rc, out, err)
    assert "write an organ list as one word" in err


def test_evaluate_organs_use_commas_too(capsys, tmp_path):
    from organscope.cli import build_parser

    args = build_parser().parse_args(["evaluate", "p", "r", "--organs", "brainstem, spinal_cord"])
    assert args.organs == ["brainstem", "spinal_cord"]


def test_voxel_outside_the_scan_is_reported_in_voxels(capsys, phantom_files, phantoms, synthetic_model_path):
    shape = phantoms["RAS"].shape
    rc, out, err = _run(capsys, "query", phantom_files["RAS"], "--voxel", "--point", f"0,0,{shape[2]}",
                        "--model", synthetic_model_path)
    _one_error_line(rc, out, err)
    assert f"Voxel (0, 0, {shape[2]}) lies outside the scan, whose shape is {shape[0]} x {shape[1]} x {shape[2]}" in err
    assert "mm" not in err


def test_help_does_not_load_the_evaluation_module():
    code = ("import sys; from organscope import cli; cli.build_parser(); "
            "print('organscope.metrics.report' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_train_passes_keywords_not_the_namespace(monkeypatch):
    import organscope.training.sparse_pipeline as sp

    seen = {}
    monkeypatch.setattr(sp, "run_pipeline", lambda **kw: seen.update(kw) or 0)
    assert main(["train", "--data", "d", "--epochs", "3", "--name", "m"]) == 0
    assert seen == {"data": Path("d"), "work": Path("work"), "name": "m", "install": False, "epochs": 3}
