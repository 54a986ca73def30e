"""Golden accuracy of an engine on the three bundled OpenKBP validation cases (tests/data/openkbp): mean Dice per
organ over the cases where it was contoured, scored like `organscope evaluate` (metrics.report.score_case)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "openkbp"


def engine_dice(engine: str) -> dict:
    from organscope import api
    from organscope.datasets import Dataset
    from organscope.metrics.report import score_case

    ds = Dataset(DATA)
    per_organ: dict[str, list[float]] = {}
    for case in ds.split("validation"):
        seg = api.segment(case.load_image(), engine=engine, threads=2)
        ref = case.load_labels()
        pred_ids = {n: i for i, n in seg.names.items()}
        organs = [(n, pred_ids.get(n), ds.label_map.ids[n]) for n in case.organs]
        for s in score_case(seg.labels.array, ref.array, ref.spacing_mm, organs, tolerance_mm=2.0,
                            case=case.case_id):
            if not np.isnan(s.dice):
                per_organ.setdefault(s.organ, []).append(float(s.dice))
    dice = {o: round(float(np.mean(v)), 4) for o, v in per_organ.items()}
    return {"engine": engine, "cases": [c.case_id for c in ds.split("validation")], "dice": dice,
            "mean_dice": round(float(np.mean(list(dice.values()))), 4)}
