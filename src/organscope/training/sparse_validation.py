"""Validation of a sparse classifier on labelled scans: segmentation Dice per organ (contoured organs only)
and point accuracy / macro-F1 on random points (background included, as in the paper).

Shared by the training pipeline (model selection, the model card) and the golden test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..datasets import Case
from ..metrics.overlap import confusion, dice
from ..metrics.points import UNKNOWN, macro_f1, point_accuracy


@dataclass(frozen=True)
class ValidationResult:
    dice: dict[str, float]          # organ -> mean Dice over the cases that contour it
    dice_n: dict[str, int]
    mean_dice: float                # mean of the per-organ means
    point_accuracy: float
    macro_f1: float
    seconds_per_case: float

    def to_dict(self) -> dict:
        r = lambda x: round(float(x), 4)  # noqa: E731
        return {"dice": {k: r(v) for k, v in self.dice.items()}, "dice_cases": self.dice_n,
                "mean_dice": r(self.mean_dice), "point_accuracy": r(self.point_accuracy),
                "macro_f1": r(self.macro_f1), "seconds_per_case": round(self.seconds_per_case, 3)}


def random_points_reference(case: Case, labels: np.ndarray, pred: np.ndarray, class_ids: dict[str, int]) -> np.ndarray:
    """Reference labels for point metrics: a background voxel predicted as an organ *not contoured* in this case
    cannot be judged (that organ may be there), so it is marked unknown."""
    ref = labels.astype(np.int64).copy()
    unc = [class_ids[o] for o in case.uncontoured if o in class_ids]
    ref[(ref == 0) & np.isin(pred, unc)] = UNKNOWN
    return ref


def validate(engine, cases: list[Case], *, n_points: int = 1000, seed: int = 0, progress: bool = True,
             point_batch_only: bool = False) -> ValidationResult:
    import time

    classes = list(engine.classes)
    ids = {n: i for i, n in enumerate(classes)}
    per_organ: dict[str, list[float]] = {n: [] for n in classes[1:]}
    preds, refs = [], []
    rng = np.random.default_rng(seed)
    seconds = 0.0
    for case in tqdm(cases, desc="validating", disable=not progress):
        vol = case.load_image()
        labels = case.load_labels().array
        scan = engine.prepare(vol)
        vox = np.stack([rng.integers(0, s, n_points) for s in vol.shape], axis=1)
        p = engine.query(scan, vox, voxel=True).labels
        preds.append(p)
        refs.append(random_points_reference(case, labels[tuple(vox.T)], p, ids))
        if point_batch_only:
            continue
        t = time.perf_counter()
        seg = engine.segment(scan).labels.array
        seconds += time.perf_counter() - t
        for organ in case.organs:
            if organ in ids:
                d = dice(confusion(seg == ids[organ], labels == ids[organ]))
                if np.isfinite(d):
                    per_organ[organ].append(d)
    pred, ref = np.concatenate(preds), np.concatenate(refs)
    means = {k: float(np.mean(v)) for k, v in per_organ.items() if v}
    return ValidationResult(means, {k: len(v) for k, v in per_organ.items() if v},
                            float(np.mean(list(means.values()))) if means else float("nan"),
                            point_accuracy(pred, ref), macro_f1(pred, ref, labels=range(len(classes))),
                            seconds / max(len(cases), 1))
