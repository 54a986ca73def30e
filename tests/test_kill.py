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


def _wait_for_handlers(pid: int, timeout_s: float = 60.0) -> None:
    """Wait until the CLI has installed its SIGTERM handler (bit 15 of SigCgt in /proc/PID/status): a signal
    during the interpreter's start-up, before organscope runs, is Python's default behaviour, not organscope's."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # not Linux: fall back to the plain delay
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            caught = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                          if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay_s", [0.1, 1.0, 2.0])  # after the handlers are in; the run takes several seconds
def test_kill_leaves_nothing_new(tmp_path, sig, delay_s):
    out = tmp_path / "seg.nii.gz"
    old = tmp_path / "seg.statistics.json"
    old.write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "organscope.cli", "segment", "-i", str(SCAN), "-o", str(out),
                             "--statistics", "--preview", "--masks", "--no-progress", "--threads", "1"],
                            env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_handlers(proc.pid)
    time.sleep(delay_s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 143, -sig), (proc.returncode, err)
    assert names == ["seg.statistics.json"], names
    assert old.read_text() == '{"old": true}\n'
