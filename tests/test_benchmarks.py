"""Smoke test of the benchmark script: it runs end to end at test sizes and prints its sections.

No timing is asserted here (benchmarks print figures; they do not pass or fail on speed)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from organscope.engines.sparse.model import DEFAULT_MODEL
from organscope.modelcard import MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_sparse.py"
SHIPPED = MODELS_DIR / f"{DEFAULT_MODEL}.onnx"


@pytest.mark.skipif(not (SHIPPED.exists() and SHIPPED.with_suffix(".json").exists()),
                    reason=f"the shipped sparse model ({SHIPPED.name} + .json card) is not in {MODELS_DIR}")
def test_bench_sparse_quick(tmp_path):
    out_json = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeats", "2", "--seg-repeats", "1",
         "--cache", str(tmp_path / "cache"), "--json", str(out_json)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for heading in ("organscope sparse-engine benchmark", "machine:", "threads:",
                    "== 1. Point classification", "click: query(1 point)", "batch: query(",
                    "gather only, plain numpy",
                    "== 2. Full segmentation", "peak RSS:", "where the time goes", "level 1:",
                    "== 3. Baselines", "(a) gather", "(b) dense", "ESTIMATED", "(c) from the paper"):
        assert heading in text, f"missing {heading!r} in the output:\n{text}"
    figures = json.loads(out_json.read_text())
    assert {"machine", "points", "segmentation", "baselines", "paper"} <= set(figures)
    assert figures["segmentation"]["points_classified"] > 0


def test_bench_sparse_missing_model_message(tmp_path):
    """A missing model gives one clear sentence and a non-zero exit, not a traceback."""
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--model", str(tmp_path / "nope.onnx")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "model not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_service_quick(tmp_path):
    """The service load test runs end to end (server on loopback, N = 1, 8, 32 clients) with no failed request."""
    pytest.importorskip("fastapi")
    out_json = tmp_path / "service.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_service.py"), "--quick", "--seconds", "0.5",
         "--max-requests", "60", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for heading in ("organscope service load test", "== Concurrent clients", "p99 ms", "== Reference"):
        assert heading in proc.stdout, f"missing {heading!r} in the output:\n{proc.stdout}"
    figures = json.loads(out_json.read_text())
    assert [lv["clients"] for lv in figures["levels"]] == [1, 8, 32]
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in figures["levels"]), figures["levels"]


# ----------------------------------------------------------------------------------------------------------
# bench_cnn3d.py: organscope engines vs. the peers (MONAI SegResNet, nnU-Net PlainConvUNet; optional extra)
# ----------------------------------------------------------------------------------------------------------
BENCH_CNN3D = REPO / "benchmarks" / "bench_cnn3d.py"


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def test_bench_cnn3d_quick(tmp_path, synthetic_model_path):
    """--quick runs end to end: every registered organscope engine (the shipped model where there is one, else a
    synthetic test model, named in the output) and the peers whose packages are installed (CI installs
    .[dev,train] only, so there the peers are skipped and the script must say which extra to install)."""
    pytest.importorskip("onnx")
    from organscope.engines.registry import ENGINES

    args = [sys.executable, str(BENCH_CNN3D), "--quick", "--repeats", "1", "--cache", str(tmp_path / "cache"),
            "--json", str(tmp_path / "figures.json")]
    engines = [e for e in ("cnn3d", "sparse") if e in ENGINES]
    args += ["--engines", ",".join(engines)]
    if "sparse" in engines and not (SHIPPED.exists() and SHIPPED.with_suffix(".json").exists()):
        args += ["--sparse-model", str(synthetic_model_path)]
    if "cnn3d" in engines:
        from organscope.engines.cnn3d.engine import DEFAULT_MODEL as CNN3D_MODEL
        from organscope.modelcard import MODELS_DIR as CNN3D_DIR

        if not (CNN3D_DIR / f"{CNN3D_MODEL}.onnx").exists():
            from helpers import synthetic_cnn3d as syn3

            args += ["--cnn3d-model", str(syn3.write_model(tmp_path / "cnn3d_model"))]
    peers = [p for p, mod in (("monai", "monai"), ("nnunet", "dynamic_network_architectures")) if _importable(mod)]
    have_torch = _importable("torch")
    args += ["--peers", "monai,nnunet"]  # asks for both: the missing ones must be reported, not crash the run

    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for heading in ("organscope cnn3d benchmark", "machine:", "threads:", "scan:",
                    "== 1. Seconds per scan", "== 3. Ratios", "aim: cnn3d <= 2 s per scan"):
        assert heading in text, f"missing {heading!r} in the output:\n{text}"
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert {"machine", "organscope", "peers", "ratios", "aims"} <= set(figures)
    for e in engines:
        assert figures["organscope"][e]["segment_s"] > 0, figures["organscope"][e]
        assert figures["organscope"][e]["output_on_input_grid"]
    if not have_torch:
        peers = []
    for p in peers:
        fig = figures["peers"][p]
        assert fig["segment_s"] > 0 and fig["parameters"] > 1_000_000 and fig["tiles"] == 1, fig
        assert fig["output_on_input_grid"]
        assert f"{p} " in text and "source:" in text
    if len(peers) < 2:
        assert 'pip install -e ".[peers]"' in text
    if peers and engines:
        assert "x the time" in text
        assert set(figures["ratios"]) == {f"{p}/{e}" for p in peers for e in engines}


def test_bench_first_run_once(tmp_path):
    """The first-run benchmark runs the CLI with an empty numba cache and again with the filled one; the first
    segment prints the compile notice and the second does not."""
    out_json = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_first_run.py"), "--repeats", "1",
                           "--json", str(out_json)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "segment --engine sparse" in proc.stdout and "query (1 point)" in proc.stdout, proc.stdout
    rows = {r["command"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert rows["segment --engine sparse"]["notice"] == [[True, False]]


def test_label_sensitivity_scores_a_cube_and_runs_on_the_bundled_cases(tmp_path):
    """A 4-voxel cube moved one voxel keeps 48 of 64 voxels (Dice 0.75); eroded (6-connected) it keeps its 2x2x2
    core (2*8/72); dilated it gains its 6 faces of 16 (2*64/(64+160)); the script runs on the bundled cases."""
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    import label_sensitivity as L

    cube = np.zeros((10, 10, 10), bool)
    cube[3:7, 3:7, 3:7] = True
    s = L.organ_scores(cube, through_axis=2)
    assert s["voxels"] == 64
    assert s["shift_in_plane"] == pytest.approx(0.75) and s["shift_through_plane"] == pytest.approx(0.75)
    assert s["eroded"] == pytest.approx(16 / 72) and s["dilated"] == pytest.approx(128 / 224)
    flat = np.zeros((10, 10, 10), bool)
    flat[2:8, 2:8, 4:6] = True  # a slab two voxels thick along axis 2: a shift across it halves the overlap
    f = L.organ_scores(flat, through_axis=2)
    assert f["shift_through_plane"] == pytest.approx(0.5) and f["shift_in_plane"] == pytest.approx(5 / 6)
    out = tmp_path / "sens.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "label_sensitivity.py"),
                        str(REPO / "tests" / "data" / "openkbp"), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 cases" in r.stdout and "spinal_cord" in r.stdout
    organs = json.loads(out.read_text())["organs"]
    assert organs["mandible"]["cases"] == 3 and 0 < organs["mandible"]["shift_mean"] < 1


def test_slice_extent_separates_extent_from_in_slice_disagreement(tmp_path):
    """A prediction that matches the reference on its slices but runs two slices further scores Dice 1 within the
    common slices and counts the extra voxels outside them; the script runs the shipped model on the bundled cases."""
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    import slice_extent as E

    ref = np.zeros((8, 8, 12), bool)
    ref[2:5, 2:5, 3:7] = True  # 4 slices along axis 2, 9 voxels each
    pred = ref.copy()
    pred[2:5, 2:5, 7:9] = True  # 2 more slices
    s = E.extent_scores(ref, pred, slice_axis=2)
    assert s["dice_common_slices"] == 1.0 and s["dice"] == pytest.approx(72 / 90)
    assert (s["slices_reference"], s["slices_predicted"], s["slices_common"]) == (4, 6, 4)
    assert s["predicted_voxels_outside"] == 18 and s["reference_voxels_outside"] == 0
    out = tmp_path / "extent.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "slice_extent.py"), str(REPO / "tests" / "data" / "openkbp"),
                        "--organs", "larynx,mandible", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["mandible"]["cases"] == 3 and m["mandible"]["dice"] > 0.7  # the golden test's cases
    assert m["mandible"]["dice_common_slices"] >= m["mandible"]["dice"]  # dropping slices drops only errors
