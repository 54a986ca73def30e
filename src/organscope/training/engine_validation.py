"""Scoring a trained engine the way users will see it: segment every validation scan with the engine itself,
write the label maps, and score them like `organscope evaluate` (Dice, Jaccard, NSD at 2 mm, HD95 per
contoured organ). Shared by the cnn3d, slice2d and cascade pipelines when they write a model card."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import save_labels
from ..metrics.report import evaluate_dirs


def score_engine(engine, cases, data_root: Path, work: Path, *, quiet: bool = False) -> dict:
    """{"mean", "per_organ", "median_seconds" (per timing stage)} of `engine` on `cases`; predictions go to
    `work` (created)."""
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, list[float]] = {}
    for case in cases:
        seg = engine.segment(case.load_image())
        for k, v in seg.timings_s.items():
            seconds.setdefault(k, []).append(v)
        save_labels(seg.labels, seg.labels.array, work / f"{case.case_id}.nii.gz", {0: "background", **seg.names})
    report = evaluate_dirs(work, Path(data_root) / "labels")
    if not quiet:
        print(report.table(), flush=True)
    return {"mean": report.mean_row(),
            "per_organ": {o: {"n": s.n, "dice": s.dice_mean, "dice_sd": s.dice_sd, "jaccard": s.jaccard_mean,
                              "nsd_2mm": s.nsd_mean, "hd95_mm": s.hd95_mm_mean} for o, s in report.summary().items()},
            "median_seconds": {k: float(np.median(v)) for k, v in seconds.items()}}
