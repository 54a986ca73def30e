"""SIGTERM / SIGINT during `organscope segment` with several outputs: no new output and no hidden temp file or
folder stays, and an output that existed before is intact."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCAN = sorted((Path(__file__).parent / "data" / "openkbp" / "images").glob("*.nii.gz"))[0]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay_s", [0.5, 1.5, 2.5])  # the run takes several seconds with one thread
def test_kill_leaves_nothing_new(tmp_path, sig, delay_s):
    out = tmp_path / "seg.nii.gz"
    old = tmp_path / "seg.statistics.json"
    old.write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "organscope.cli", "segment", "-i", str(SCAN), "-o", str(out),
                             "--statistics", "--preview", "--masks", "--no-progress", "--threads", "1"],
                            env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 143, -sig), (proc.returncode, err)
    assert names == ["seg.statistics.json"], names
    assert old.read_text() == '{"old": true}\n'
