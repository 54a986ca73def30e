"""Per-class logit offsets, fitted on training cases, that undo the over-segmentation the training loss teaches.

The cnn3d loss weights organ voxels up (soft Dice, and cross-entropy with organ weight 10): a weighted
cross-entropy's optimum is the posterior times the class weight, so the argmax of the raw logits grows every
organ outwards. On 11 validation cases the shipped cnn3d network's precision was 0.45-0.65 at recall 0.78-0.93
(brainstem, cord, parotids, larynx). Adding a constant to each organ's logit before the argmax moves that
boundary; the constants are chosen on training cases (never the validation cases they are reported on), one
organ at a time, to maximise that organ's mean Dice on the network's grid, with the others held; two passes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

#: candidate offsets (added to an organ's logit; negative shrinks it)
CANDIDATES = np.round(np.arange(-4.0, 5.01, 0.25), 2)


def fit_offsets(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_special: int,
                candidates: np.ndarray = CANDIDATES, passes: int = 2, log=print) -> np.ndarray:
    """samples: (logits (classes, *grid), target (*grid) class indices, contoured (organs,) bool) per case, with
    classes = n_special background classes then one per organ. Returns (classes,) float32 offsets (0 for the
    background classes). An organ is scored on the cases where it is contoured and present."""
    n_classes = samples[0][0].shape[0]
    off = np.zeros(n_classes, np.float32)
    zero = int(np.argmin(np.abs(candidates)))
    for p in range(passes):
        for c in range(n_special, n_classes):
            dice = np.zeros(len(candidates))
            n = 0
            for logits, target, contoured in samples:
                g = target == c
                if not (contoured[c - n_special] and g.any()):
                    continue
                shifted = logits.astype(np.float32) + off[:, None, None, None]
                others = np.delete(shifted, c, axis=0).max(0)
                own = logits[c].astype(np.float32)
                n += 1
                gs = g.sum()
                for j, v in enumerate(candidates):
                    pred = own + v > others
                    dice[j] += 2 * (pred & g).sum() / (pred.sum() + gs)
            if n == 0:
                continue
            # ties (e.g. an organ the network never predicts at any candidate) keep the smallest change
            tied = np.flatnonzero(dice >= dice.max() - 1e-9)
            off[c] = candidates[tied[np.argmin(np.abs(candidates[tied]))]]
            log(f"pass {p + 1} class {c}: offset {off[c]:+.2f}, training Dice {dice.max() / n:.4f} "
                f"(offset 0: {dice[zero] / n:.4f}, {n} cases)")
    return off


def cached_samples(onnx_path: Path, cache: Path, every: int = 6, threads: int = 2, group_organs=None, crop=None,
                   cases=None):
    """(logits float16, target, contoured) of every `every`-th training case of a cnn3d cache, through an
    exported model: the whole cached grid (the cnn3d network; the cache holds each case as the engine resamples
    it), or, with `group_organs` and `crop`, a cascade group's crop around the true group box (as its training
    and validation cut it), targets and contoured flags in the group network's classes. `cases`: case ids to draw
    from instead of the training split (a cross-validation fold's training cases)."""
    import onnxruntime as ort

    from ..engines.cascade.groups import MARGIN_VOX, crop_window, extract
    from ..engines.cnn3d.preprocess import WINDOWS_HU
    from ..intensity import windows
    from .cascade_data import group_boxes, member_indices, target_lut

    meta = json.loads((cache / "cases.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    contoured = np.load(cache / "contoured.npy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if cases is None:
        ids = [n for n, s in enumerate(meta["splits"]) if s == "train"][::every]
    else:
        wanted = set(cases)
        ids = [n for n, c in enumerate(meta["cases"]) if c in wanted][::every]
    if group_organs is not None:
        lut = target_lut(meta["organs"], group_organs)
        members = member_indices(meta["organs"], group_organs)
        boxes = group_boxes(targets, meta["organs"], group_organs)
    out = []
    for n in ids:
        img, tgt, known = np.asarray(images[n]), np.asarray(targets[n]), contoured[n]
        if group_organs is not None:
            if boxes[n] is None:
                continue
            start, size = crop_window(*boxes[n], crop, MARGIN_VOX, limit=images.shape[1:])
            img = extract(img, start, size)
            tgt = lut[np.clip(extract(tgt, start, size), 0, None).astype(np.int64)]
            known = known[members]
        x = windows(np.asarray(img, np.float32), WINDOWS_HU)[None]
        out.append((sess.run(None, {name: x})[0][0].astype(np.float16), tgt, known))
    return out
