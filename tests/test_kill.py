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


def _segment(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "organscope.cli", "segment", "-i", str(SCAN), "-o",
                             str(tmp_path / "seg.nii.gz"), "--statistics", "--preview", "--masks", "--no-progress",
                             "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def run_seconds(tmp_path_factory) -> float:
    """How long an uninterrupted run takes on this machine, from its signal handlers being in to its exit: the
    signals below land at fractions of it, so they fall inside the run on a fast machine and on a busy one."""
    proc = _segment(tmp_path_factory.mktemp("whole"))
    _wait_for_handlers(proc.pid)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.75])  # of an uninterrupted run, after the handlers are in
def test_kill_leaves_nothing_new(tmp_path, sig, fraction, run_seconds):
    old = tmp_path / "seg.statistics.json"
    old.write_text('{"old": true}\n')
    proc = _segment(tmp_path)
    _wait_for_handlers(proc.pid)
    time.sleep(fraction * run_seconds)
    if proc.poll() is not None:  # this run was faster than the measured one: nothing was interrupted
        pytest.skip(f"the run ended before {fraction:.0%} of the measured {run_seconds:.1f} s")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130, 143, -sig), (proc.returncode, err)
    if names != ["seg.statistics.json"]:
        # the signal came after the outputs had been committed together (a busy machine: the run was faster than
        # the measured one): then every output is there and whole, and nothing hidden is left
        assert names == ["seg.json", "seg.nii.gz", "seg.preview.png", "seg.statistics.json", "seg_masks"], names
        import json

        import nibabel as nib

        assert json.loads(old.read_text()) != {"old": True}
        assert nib.load(tmp_path / "seg.nii.gz").get_fdata().max() > 0
        assert json.loads((tmp_path / "seg.json").read_text())
        return
    assert proc.returncode in (130, 143, -sig), (proc.returncode, err)
    assert old.read_text() == '{"old": true}\n'


def test_a_signal_while_the_interpreter_shuts_down_ends_it_without_a_traceback():
    """After main has returned (outputs whole), a SIGINT during the interpreter's shutdown (here from an atexit
    hook, as a finaliser would meet it) ends the process at once with 128 + SIGINT and no traceback; what main
    printed still reaches the pipe."""
    code = ("import atexit, os, signal, time\n"
            "import organscope.cli as cli\n"
            "cli.main = lambda: print('done') or 0\n"
            "def late():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "    print('not reached')\n"
            "atexit.register(late)\n"
            "cli.entry()\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 128 + signal.SIGINT, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "KeyboardInterrupt" not in res.stderr, res.stderr
    assert res.stdout == "done\n"
