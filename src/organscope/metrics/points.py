"""Point classification metrics: accuracy and macro-F1 over classes, background included (as the
sparse point-classifier paper reports them). Reference label -1 means unknown: such points are ignored.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import InputError

UNKNOWN = -1


def _known(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(pred).ravel(), np.asarray(ref).ravel()
    if p.shape != r.shape:
        raise InputError(f"Got {p.size} predicted labels for {r.size} reference labels; they must pair up.")
    keep = r != UNKNOWN
    return p[keep].astype(np.int64), r[keep].astype(np.int64)


def point_accuracy(pred, ref) -> float:
    """Fraction of points whose predicted label equals the reference; NaN if no point is known."""
    p, r = _known(pred, ref)
    return float(np.mean(p == r)) if r.size else float("nan")


def per_class_f1(pred, ref, labels: Iterable[int] | None = None) -> dict[int, float]:
    """F1 = 2 TP / (2 TP + FP + FN) per class. `labels` defaults to every class seen in the known
    reference or prediction (0 = background included); a class absent from both gets NaN."""
    p, r = _known(pred, ref)
    classes = sorted(set(np.unique(r).tolist()) | set(np.unique(p).tolist())) if labels is None else list(labels)
    out: dict[int, float] = {}
    for c in classes:
        tp = int(np.count_nonzero((p == c) & (r == c)))
        den = int(np.count_nonzero(p == c)) + int(np.count_nonzero(r == c))
        out[int(c)] = 2.0 * tp / den if den else float("nan")
    return out


def macro_f1(pred, ref, labels: Iterable[int] | None = None) -> float:
    """Unweighted mean of the per-class F1 (background included), skipping classes absent from both
    the known reference and the prediction; NaN if no class remains."""
    scores = [v for v in per_class_f1(pred, ref, labels).values() if not np.isnan(v)]
    return float(np.mean(scores)) if scores else float("nan")
