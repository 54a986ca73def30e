"""Voxel overlap: confusion counts once, then Dice and Jaccard from them.

Empty-mask convention (tested): both masks empty -> NaN (the organ is absent from both, so it is not
scored; aggregate with nan-aware means); exactly one empty -> 0.0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Counts:
    """Voxel confusion counts of a predicted mask against a reference mask."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        return self.tp + self.fn


def confusion(pred_mask: np.ndarray, ref_mask: np.ndarray) -> Counts:
    """Counts of two same-shaped masks (any dtype; nonzero = inside)."""
    p, r = _as_masks(pred_mask, ref_mask)
    tp = int(np.count_nonzero(p & r))
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    return Counts(tp=tp, fp=n_p - tp, fn=n_r - tp, tn=int(p.size) - n_p - n_r + tp)


def dice(counts: Counts) -> float:
    """2 TP / (2 TP + FP + FN); NaN when both masks are empty, 0.0 when exactly one is."""
    den = 2 * counts.tp + counts.fp + counts.fn
    return float("nan") if den == 0 else 2.0 * counts.tp / den


def jaccard(counts: Counts) -> float:
    """TP / (TP + FP + FN); NaN when both masks are empty, 0.0 when exactly one is."""
    den = counts.tp + counts.fp + counts.fn
    return float("nan") if den == 0 else counts.tp / den


def _as_masks(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(pred_mask), np.asarray(ref_mask)
    if p.shape != r.shape:
        raise InputError(f"The prediction mask has shape {p.shape} but the reference has {r.shape}; "
                         "both must be on the same grid.")
    return p.astype(bool, copy=False), r.astype(bool, copy=False)
