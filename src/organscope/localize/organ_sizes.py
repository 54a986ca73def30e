"""Typical organ sizes from a training set (volume in ml, box extent in mm along R, A, S), stored as data
(`data/organ_sizes_<dataset>.json`) and used by the localisers: a box of the mean size around a centroid, and a
lower bound on what counts as "present"."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@lru_cache(maxsize=4)
def organ_sizes(dataset: str = "openkbp") -> dict[str, dict]:
    """organ -> {"volume_ml": mean, "volume_ml_p5": 5th percentile, "extent_mm": [R, A, S] mean, "n": cases}."""
    path = DATA_DIR / f"organ_sizes_{dataset}.json"
    return json.loads(path.read_text())["organs"] if path.exists() else {}


def measure(data_root: Path, split: str = "train") -> dict:
    """Measure the sizes over a dataset's split (contoured organs only)."""
    from ..datasets import Dataset

    ds = Dataset(data_root)
    vols: dict[str, list[float]] = {}
    ext: dict[str, list[np.ndarray]] = {}
    for case in ds.split(split):
        lab = case.load_labels().to_canonical()[0]
        sp = lab.spacing_mm
        for name in case.organs:
            m = lab.array == ds.label_map.ids[name]
            if not m.any():
                continue
            idx = np.argwhere(m)
            vols.setdefault(name, []).append(float(m.sum() * np.prod(sp) / 1000))
            ext.setdefault(name, []).append((idx.max(0) - idx.min(0) + 1) * sp)
    return {"source": f"{data_root.name} {split} split", "organs": {
        n: {"volume_ml": round(float(np.mean(v)), 2), "volume_ml_p5": round(float(np.percentile(v, 5)), 2),
            "extent_mm": [round(float(x), 1) for x in np.mean(ext[n], axis=0)], "n": len(v)}
        for n, v in vols.items()}}
