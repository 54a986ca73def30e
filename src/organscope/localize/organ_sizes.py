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


@lru_cache(maxsize=4)
def qc_thresholds(dataset: str = "openkbp") -> dict:
    """The anatomy check's thresholds chosen on training cases (`data/qc_<dataset>.json`): per engine and organ,
    the lowest mean probability seen on training cases."""
    path = DATA_DIR / f"qc_{dataset}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def measure_anatomy(data_root: Path, split: str = "train") -> dict:
    """What the anatomy check (`organscope.qc`) compares against, per organ over a split (contoured organs only):
    the smallest and largest volume, the largest box extent (R, A, S), the range of the centroid's (R, A)
    offset from the body outline's centre at the organ's level, and the range of its centroid's height above
    each other organ's (S, mm)."""
    from ..datasets import Dataset
    from ..qc import body_mask_canonical, organ_geometry

    ds = Dataset(data_root)
    geo: dict[str, list] = {}
    for case in ds.split(split):
        lab = case.load_labels().to_canonical()[0]
        body = body_mask_canonical(case.load_image().to_canonical()[0])
        g = organ_geometry(lab.array, lab.affine, body, {n: ds.label_map.ids[n] for n in case.organs})
        for name, og in g.items():
            geo.setdefault(name, []).append((og, g))
    out = {}
    for name, rows in geo.items():
        vol = [og.volume_ml for og, _ in rows]
        ext = np.array([og.extent_mm for og, _ in rows])
        off = np.array([og.body_offset_mm for og, _ in rows if og.body_offset_mm is not None])
        pairs: dict[str, list[float]] = {}
        for og, g in rows:
            for other, o in g.items():
                if other != name:
                    pairs.setdefault(other, []).append(og.centroid_mm[2] - o.centroid_mm[2])
        out[name] = {"volume_ml_min": round(float(min(vol)), 3), "volume_ml_max": round(float(max(vol)), 2),
                     "extent_mm_max": [round(float(x), 1) for x in ext.max(0)],
                     "body_offset_mm": [[round(float(off[:, a].min()), 1), round(float(off[:, a].max()), 1)]
                                        for a in range(2)],
                     "superior_offset_mm": {o: [round(float(min(v)), 1), round(float(max(v)), 1)]
                                            for o, v in sorted(pairs.items())}}
    return out


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


if __name__ == "__main__":
    import sys

    doc = measure(Path(sys.argv[1]))
    for organ, extra in measure_anatomy(Path(sys.argv[1])).items():
        doc["organs"][organ].update(extra)
    (DATA_DIR / "organ_sizes_openkbp.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
