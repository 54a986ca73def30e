"""Smoke test of the benchmark script: it runs end to end at test sizes and prints its sections.

No timing is asserted here (benchmarks print figures; they do not pass or fail on speed)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from organscope.engines.sparse.model import DEFAULT_MODEL, MODELS_DIR

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
