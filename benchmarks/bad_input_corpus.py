"""Run the generated corpus of bad inputs (tests/helpers/bad_corpus.py) through segment, query, locate and
evaluate (in-process, as the CLI's main) and print a table: clean errors, tracebacks, partial outputs, data lost.

    PYTHONPATH=src python benchmarks/bad_input_corpus.py
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.bad_corpus import CORPUS, NEEDS_NON_ROOT, NOT_FOR_EVALUATE, ct_array  # noqa: E402

from organscope.cli import main  # noqa: E402


def argv_for(command: str, scan: Path, work: Path) -> list[str]:
    out = work / "out"
    if command == "segment":
        return ["segment", "-i", str(scan), "-o", str(out / "seg.nii.gz"), "--statistics", "--no-progress"]
    if command == "query":
        return ["query", str(scan), "--point", "0,0,0"]
    if command == "locate":
        return ["locate", str(scan), "-o", str(out / "loc.json")]
    return ["evaluate", str(work / "pred"), str(work / "ref"), "--out", str(out / "ev")]


def setup_evaluate(scan: Path, work: Path) -> bool:
    """Reference folder holding the bad input as case.nii.gz (NIfTI inputs only), prediction a good label map."""
    if not scan.name.endswith(".nii.gz") or not scan.is_file() or scan.is_symlink():
        return False
    import nibabel as nib
    import numpy as np

    (work / "ref").mkdir()
    (work / "pred").mkdir()
    os.replace(scan, work / "ref" / "case.nii.gz")
    (work / "ref" / "case.json").write_text('{"labels": {"background": 0, "liver": 1}}')
    nib.save(nib.Nifti1Image((ct_array() > 0).astype(np.uint8), np.diag([1.5, 1.5, 3.0, 1.0])),
             str(work / "pred" / "case.nii.gz"))
    return True


def run_one(name: str, command: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        (work / "out").mkdir()
        sentinel = work / "out" / "seg.nii.gz"  # a pre-existing output that must survive
        sentinel.write_bytes(b"old output")
        scan = CORPUS[name](work / "in")
        if command == "evaluate" and (name in NOT_FOR_EVALUATE or not setup_evaluate(scan, work)):
            return {}
        before = {p: p.read_bytes() for p in (work / "out").iterdir()}
        err = io.StringIO()
        tb = False
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                rc = main(argv_for(command, scan, work))
            except SystemExit as e:
                rc = e.code
            except BaseException:
                rc, tb = None, True
                traceback.print_exc()
        text = err.getvalue()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        after = {p for p in (work / "out").iterdir()}
        return {
            "clean": rc == 2 and len(lines) == 1 and lines[0].startswith("organscope: error:") and not tb,
            "traceback": tb or "Traceback" in text,
            "partial": bool(after - set(before)),
            "lost": any(not p.exists() or p.read_bytes() != b for p, b in before.items()),
            "rc": rc, "stderr": lines[-1] if lines else "",
        }


def main_table() -> int:
    rows = []
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    for name in CORPUS:
        if name in NEEDS_NON_ROOT and root:
            continue
        for command in ("segment", "query", "locate", "evaluate"):
            r = run_one(name, command)
            if r:
                rows.append((name, command, r))
    bad = [(n, c, r) for n, c, r in rows if not r["clean"] or r["traceback"] or r["partial"] or r["lost"]]
    for n, c, r in bad:
        print(f"NOT CLEAN {n:<28} {c:<9} rc={r['rc']} {r['stderr'][:150]}")
    print(f"\n{'inputs':>7} {'runs':>5} {'clean errors':>13} {'tracebacks':>11} {'partial outputs':>16} {'data lost':>10}")
    print(f"{len({n for n, _, _ in rows}):>7} {len(rows):>5} {sum(r['clean'] for *_, r in rows):>13} "
          f"{sum(r['traceback'] for *_, r in rows):>11} {sum(r['partial'] for *_, r in rows):>16} "
          f"{sum(r['lost'] for *_, r in rows):>10}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_table())
