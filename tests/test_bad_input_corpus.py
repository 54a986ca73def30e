"""The generated corpus of bad inputs (helpers/bad_corpus.py) through segment, query, locate and evaluate: each gives
exit status 2, exactly one stderr line "organscope: error: ...", no traceback, no new output, and a pre-existing
output left as it was (the runner is benchmarks/bad_input_corpus.py, which also prints the table)."""
import importlib.util
import os
from pathlib import Path

import pytest

from helpers.bad_corpus import CORPUS, NEEDS_NON_ROOT, NOT_FOR_EVALUATE

_spec = importlib.util.spec_from_file_location(
    "bad_input_corpus", Path(__file__).resolve().parents[1] / "benchmarks" / "bad_input_corpus.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

CASES = [(name, cmd) for name in CORPUS for cmd in ("segment", "query", "locate", "evaluate")
         if not (cmd == "evaluate" and name in NOT_FOR_EVALUATE)]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("name,command", CASES)
def test_bad_input(name, command):
    if name in NEEDS_NON_ROOT and os.geteuid() == 0:
        pytest.skip("root reads any file")
    r = runner.run_one(name, command)
    if not r:
        pytest.skip("evaluate takes NIfTI references only")
    assert not r["traceback"], r
    assert r["clean"], r
    assert not r["partial"], r
    assert not r["lost"], r
