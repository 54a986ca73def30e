"""Train the cnn3d network on the cache of `cnn3d_data.build_cache`, resumably, and keep the checkpoint with
the best validation mean Dice (whole 128^3 volumes, organs only where contoured).

Loss: weighted multi-class soft Dice (the paper's; air 0.1, body 0.2, organs 1, Dice pooled over the batch)
plus cross-entropy (added because it converges in far fewer steps, which a CPU budget needs). Partial labels:
in a case where organ c was not contoured, its Dice term is dropped and its probability is added to the body
class's in both terms (p_body + p_c), so "body" is never taught where c might be.

The loop (`loop.py`) resumes from RUN/last.pt, and the learning rate decays polynomially over whichever runs
out first, the step budget or the time budget (`--hours`), so a run fits the time it is given; the card records
the steps actually made.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cnn3d_data import N_SPECIAL, PatchPlan, PatchSampler, windows_torch
from .cnn3d_net import Cnn3dNet
from .loop import open_run, run_loop
from .onnx_weights import freeze_batchnorm, load_onnx_weights


@dataclass(frozen=True)
class Cnn3dSettings:
    steps: int = 20000
    hours: float = 1.5
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    width: int = 16
    val_every: int = 1000
    val_cases: int = 11  # every third validation case while training; the shipped model is scored on all 33
    seed: int = 0
    threads: int = 2
    #: batch norms keep their loaded statistics (set for a start from a shipped ONNX model, whose batch norms
    #: are folded into the convolutions: `onnx_weights`)
    freeze_batchnorm: bool = False


#: cross-entropy weight of organ voxels; 1 until step 11000 of the shipped run, 10 after it (see cnn3d_revive)
CE_ORGAN_WEIGHT = 10.0


def class_weights(n_classes: int) -> torch.Tensor:
    w = torch.ones(n_classes)
    w[0], w[1] = 0.1, 0.2
    return w


def partial_loss(logits: torch.Tensor, target: torch.Tensor, contoured: torch.Tensor) -> torch.Tensor:
    """Soft Dice + CE with uncontoured organs merged into the body class. contoured: (B, n_organs) bool.

    The CE is computed from log-softmax (log p_body' = logsumexp of the merged classes' log-probabilities):
    a first version took log(p.clamp_min(1e-6)), whose gradient is zero below 1e-6, and two organs whose
    probability fell that low early in training never came back (esophagus and larynx at Dice 0 after
    9000 steps)."""
    n_classes = logits.shape[1]
    logp = logits.log_softmax(1)
    prob = logp.exp()
    unknown = ~contoured  # (B, n_organs)
    # log of "body or an organ not contoured here"
    organ_logp = logp[:, N_SPECIAL:].masked_fill(~unknown[:, :, None, None, None], float("-inf"))
    logp_body = torch.logsumexp(torch.cat([logp[:, 1:2], organ_logp], dim=1), dim=1)
    merged_logp = torch.cat([logp[:, :1], logp_body[:, None], logp[:, N_SPECIAL:]], dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).float()
    # organ voxels weigh CE_ORGAN_WEIGHT times more than air/body ones (they are ~0.1 % of a patch)
    vw = torch.where(target >= N_SPECIAL, CE_ORGAN_WEIGHT, 1.0)
    ce = -((merged_logp * onehot).sum(1) * vw).sum() / vw.sum()
    # soft Dice per class pooled over the batch, uncontoured organs excluded per case
    p_body = prob[:, 1] + (prob[:, N_SPECIAL:] * unknown.float()[:, :, None, None, None]).sum(1)
    p = torch.cat([prob[:, :1], p_body[:, None], prob[:, N_SPECIAL:]], dim=1)
    valid = torch.cat([torch.ones(len(contoured), N_SPECIAL, dtype=torch.bool), contoured], dim=1).float()  # (B, C)
    inter = (p * onehot).sum((2, 3, 4)) * valid
    denom = (p.sum((2, 3, 4)) + onehot.sum((2, 3, 4))) * valid
    dice = (2 * inter.sum(0) + 1.0) / (denom.sum(0) + 1.0)
    w = class_weights(n_classes) * (valid.sum(0) > 0).float()
    return ce + (w * (1 - dice)).sum() / w.sum()


@torch.no_grad()
def predict_volume(net, hu: np.ndarray) -> np.ndarray:
    """Argmax class (0 air, 1 body, 2.. organs) on a whole cached volume."""
    x = windows_torch(torch.from_numpy(np.asarray(hu, dtype=np.float32))[None, None])
    return net(x).argmax(1)[0].numpy().astype(np.uint8)


def dice_scores(pred: np.ndarray, target: np.ndarray, contoured: np.ndarray) -> np.ndarray:
    """Per organ Dice (NaN where not contoured or both empty); classes 0 and 1 are background."""
    out = np.full(len(contoured), np.nan)
    for o, known in enumerate(contoured):
        if not known:
            continue
        a, b = pred == o + N_SPECIAL, target == o + N_SPECIAL
        s = a.sum() + b.sum()
        if s:
            out[o] = 2 * np.logical_and(a, b).sum() / s
    return out


def validate(net, images, targets, contoured, cases) -> np.ndarray:
    net.eval()
    scores = np.stack([dice_scores(predict_volume(net, images[n]), np.asarray(targets[n]), contoured[n])
                       for n in cases])
    net.train()
    return scores


def training_cases(meta: dict, val_cases: int, fold: int | None = None, *,
                   all_cases: bool = False) -> tuple[list[int], list[int]]:
    """(training, validation) indices into the cache. Without a fold: the dataset's train split, and every k-th
    case of its validation split (val_cases of them) to pick the checkpoint. With a cross-validation fold
    (training/folds.py, over the cache's cases, which must be all the dataset's cases, as build_cache's default
    splits give for OpenKBP): every case outside the fold, less every k-th of them (val_cases), which pick the
    checkpoint, so that the fold's held-out patients choose nothing. `all_cases`: every case of the cache,
    whatever its split, less every k-th of them that pick the checkpoint: the fold recipe with no fold left out
    (the model shipped after cross-validation chose the recipe)."""
    if all_cases and fold is not None:
        raise ValueError("all_cases and fold exclude each other: a fold's model leaves that fold's cases out")
    if fold is None and not all_cases:
        train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train"]
        val_ids = [n for n, s in enumerate(meta["splits"]) if s == "validation"]
        return train_ids, val_ids[::max(1, len(val_ids) // val_cases)][:val_cases]
    outside = list(range(len(meta["cases"]))) if all_cases else cases_outside_fold(meta, fold)
    val_ids = outside[::max(1, len(outside) // val_cases)][:val_cases]
    return [n for n in outside if n not in set(val_ids)], val_ids


def cases_outside_fold(meta: dict, fold: int) -> list[int]:
    """Indices into the cache of every case outside cross-validation fold `fold` (training/folds.py, over the
    cache's cases)."""
    from .folds import assign_folds

    folds = assign_folds(meta["cases"])
    if fold not in set(folds.values()):
        raise ValueError(f"fold must be one of {sorted(set(folds.values()))}")
    return [n for n, c in enumerate(meta["cases"]) if folds[c] != fold]


def train(cache: Path, run_dir: Path, settings: Cnn3dSettings, plan: PatchPlan = PatchPlan(),
          init: Path | None = None, fold: int | None = None, all_cases: bool = False) -> Path:
    """`init`: start a new run from another run's weights (a warm restart: fresh optimiser, step count and
    learning-rate schedule); ignored when `run_dir` already has a checkpoint to resume. `fold`: train for that
    cross-validation fold (see training_cases); `all_cases`: every case (see training_cases). The cases trained on,
    and those that pick the checkpoint, are written to RUN/data.json (crossval checks them against the fold's
    held-out cases)."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    meta = json.loads((cache / "cases.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    contoured = np.load(cache / "contoured.npy")
    train_ids, val_ids = training_cases(meta, settings.val_cases, fold, all_cases=all_cases)
    images = np.ascontiguousarray(images)  # ~850 MB: in memory, random patches need fast access
    targets = np.ascontiguousarray(targets)

    n_classes = N_SPECIAL + len(meta["organs"])
    net = Cnn3dNet(n_classes, width=settings.width)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def warm_start(net) -> dict:
        if init.suffix == ".onnx":  # a shipped model (its training checkpoint gone): batch norms folded
            if not settings.freeze_batchnorm:
                raise ValueError("A start from an ONNX model needs freeze_batchnorm (its batch norms are folded).")
            return {"warm_start_from": str(init), "onnx_parity": load_onnx_weights(net, init)}
        ck = torch.load(init, weights_only=False)
        net.load_state_dict(ck["net"])
        return {"warm_start_from": str(init), "from_step": ck["state"]["step"], "from_history": ck["state"]["history"]}

    earlier = run_dir / "settings.json"
    if earlier.exists() and json.loads(earlier.read_text())["settings"].get("freeze_batchnorm"):
        settings = replace(settings, freeze_batchnorm=True)  # a run started from ONNX weights stays frozen
    if earlier.exists() and (run_dir / "last.pt").exists():
        started = bool((json.loads(earlier.read_text()).get("plan") or {}).get("balance_organs", False))
        if started != plan.balance_organs:  # settings.json is rewritten below: it would misdescribe the run
            raise ValueError(f"{run_dir} was started with balance_organs={started}; resume it with the same patch "
                             "plan (--balance-organs when it was on).")
        before = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
        if (before.get("fold"), bool(before.get("all_cases"))) != (fold, all_cases):
            raise ValueError(f"{run_dir} was started with fold={before.get('fold')}, all_cases="
                             f"{bool(before.get('all_cases'))}; resume it on the same cases.")
    state = open_run(net, opt, run_dir, warm_start if init is not None else None)
    (run_dir / "settings.json").write_text(json.dumps({"settings": asdict(settings), "plan": asdict(plan),
                                                       "organs": meta["organs"]}, indent=1))
    (run_dir / "data.json").write_text(json.dumps({"fold": fold, "all_cases": all_cases,
                                                   "cases": [meta["cases"][n] for n in train_ids],
                                                   "checkpoint_cases": [meta["cases"][n] for n in val_ids]},
                                                  indent=1))
    sampler = PatchSampler(images, targets, plan, seed=settings.seed + state["step"])
    rng = np.random.default_rng(settings.seed + 1 + state["step"])

    def batch_loss() -> torch.Tensor:
        if settings.freeze_batchnorm:
            freeze_batchnorm(net)
        ids = rng.choice(train_ids, settings.batch_size, replace=False)
        x, y = sampler.sample(ids)
        return partial_loss(net(x), y, torch.from_numpy(contoured[ids]))

    return run_loop(net, opt, state, run_dir, steps=settings.steps, seconds=settings.hours * 3600, lr=settings.lr,
                    val_every=settings.val_every, batch_loss=batch_loss, names=meta["organs"],
                    validate_first=init is not None,  # a warm start's own weights are a candidate for best.pt
                    validate=lambda: validate(net, images, targets, contoured, val_ids))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the cnn3d network (resumes from RUN/last.pt).")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="warm-start a new run from this checkpoint's (.pt) or shipped "
                    "model's (.onnx) weights")
    ap.add_argument("--fold", type=int, default=None,
                    help="train on the cases outside this cross-validation fold (training/folds.py, 5 folds over the "
                         "cache's cases, which must be all of the dataset's), whatever their split")
    ap.add_argument("--all-cases", action="store_true",
                    help="train on every case of the cache, whatever its split, less val_cases of them that pick the "
                         "checkpoint: the fold recipe with no fold left out, for the model shipped after "
                         "cross-validation")
    ap.add_argument("--balance-organs", action="store_true",
                    help="centre organ patches on each of a case's organs equally often (PatchPlan.balance_organs)")
    for f, v in asdict(Cnn3dSettings()).items():
        if isinstance(v, bool):
            ap.add_argument(f"--{f.replace('_', '-')}", action="store_true", default=v)
        else:
            ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    a = ap.parse_args(argv)
    if a.all_cases and a.fold is not None:
        ap.error("--all-cases and --fold exclude each other: a fold's model leaves that fold's cases out")
    s = Cnn3dSettings(**{f: getattr(a, f) for f in asdict(Cnn3dSettings())})
    if a.init is not None and a.init.suffix == ".onnx" and not s.freeze_batchnorm:
        s = replace(s, freeze_batchnorm=True)
        print("starting from an ONNX model: batch norms frozen (--freeze-batchnorm)", flush=True)
    train(a.cache, a.run, s, PatchPlan(balance_organs=a.balance_organs), init=a.init, fold=a.fold,
          all_cases=a.all_cases)


if __name__ == "__main__":
    main()
