"""Train the cascade's group networks (one compact residual 3D U-Net per organ group) on crops from the cnn3d
cache, resumably (`loop.py`), keeping the checkpoint with the best validation Dice on crops around the true group
boxes (the localiser's misses are not in this figure; the pipeline scores the whole engine).

The network is the cnn3d one (`cnn3d_net.Cnn3dNet`: residual 3D U-Net, factorised convolutions, 4 halvings)
with air, body and the group's organs as classes. Loss: soft Dice + cross-entropy (the paper's sum), partial
labels respected (`train_cnn3d.partial_loss`: an organ not contoured in a case is merged into body and dropped
from Dice). A group network may start from a whole-scan cnn3d checkpoint (`--init`): its weights, with the
output rows of the group's classes; on a 2-core CPU this saves most of the training.

    python -m organscope.training.train_cascade --cache work/cnn3d/cache --run work/cascade/run1 \
        --group midline [--init work/cnn3d/run4/best.pt] [--minutes 20] [--fold K]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..engines.cascade.groups import GROUPS, MARGIN_VOX, crop_window, extract
from ..engines.cnn3d.preprocess import WINDOWS_HU
from ..intensity import windows
from .cascade_data import GroupPlan, GroupSampler, crop_shape, group_boxes, member_indices, target_lut
from .cnn3d_data import N_SPECIAL
from .cnn3d_net import Cnn3dNet
from .loop import open_run, run_loop
from .train_cnn3d import dice_scores, partial_loss, training_cases

#: cases outside a cross-validation fold that pick a fold run's checkpoint (as train_cnn3d's val_cases)
FOLD_CHECKPOINT_CASES = 11


@dataclass(frozen=True)
class CascadeSettings:
    minutes: float = 20.0
    steps: int = 20000
    batch_size: int = 2
    lr: float = 5e-4
    weight_decay: float = 1e-5
    width: int = 16
    val_every: int = 500
    seed: int = 0
    threads: int = 1


def init_from_cnn3d(net: Cnn3dNet, checkpoint: Path, all_organs, group_organs) -> None:
    """Copy a whole-scan cnn3d checkpoint into a group network: every weight, and of the last convolution the
    rows of air, body and the group's organs."""
    state = torch.load(checkpoint, weights_only=False)["net"]
    rows = [0, 1] + [N_SPECIAL + o for o in member_indices(all_organs, group_organs)]
    own = net.state_dict()
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            v = v[rows]
        own[k] = v
    net.load_state_dict(own)


@torch.no_grad()
def validate(net, images, targets, contoured, boxes, ids, lut, members, crop) -> np.ndarray:
    """Per case and member organ, Dice on the crop around the true group box (as the engine would cut it)."""
    scores = []
    for n in ids:
        if boxes[n] is None:
            continue
        start, size = crop_window(*boxes[n], crop, MARGIN_VOX, limit=images.shape[1:])
        x = torch.from_numpy(windows(extract(np.asarray(images[n]), start, size), WINDOWS_HU)[None])
        pred = net(x).argmax(1)[0].numpy()
        tgt = lut[np.clip(extract(np.asarray(targets[n]), start, size), 0, None).astype(np.int64)]
        scores.append(dice_scores(pred, tgt, contoured[n][members]))
    return np.array(scores)


def train_group(cache: Path, run_dir: Path, group: str, settings: CascadeSettings, init: Path | None = None,
                plan: GroupPlan = GroupPlan(), fold: int | None = None) -> Path:
    """`fold`: train on the cases outside that cross-validation fold, with FOLD_CHECKPOINT_CASES of them picking
    the checkpoint (train_cnn3d.training_cases; start from the same fold's cnn3d run, never the shipped model,
    which saw the fold's patients); RUN/data.json lists both for crossval's check."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    meta = json.loads((cache / "cases.json").read_text())
    organs, members_names = meta["organs"], GROUPS[group]
    members = member_indices(organs, members_names)
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    contoured = np.load(cache / "contoured.npy")
    boxes = group_boxes(targets, organs, members_names)
    if fold is None:
        train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train" and boxes[n] is not None]
        val_ids = [n for n, s in enumerate(meta["splits"]) if s == "validation"]
    else:
        train_ids, val_ids = training_cases(meta, FOLD_CHECKPOINT_CASES, fold)
        train_ids = [n for n in train_ids if boxes[n] is not None]
    crop = crop_shape(boxes, train_ids)
    lut = target_lut(organs, members_names)
    images, targets = np.ascontiguousarray(images), np.ascontiguousarray(targets)

    net = Cnn3dNet(N_SPECIAL + len(members), width=settings.width)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def start(net) -> dict:
        init_from_cnn3d(net, init, organs, members_names)
        return {"init": str(init)}

    label = f"{group}: "
    state = open_run(net, opt, run_dir, start if init is not None else None, label=label)
    (run_dir / "settings.json").write_text(json.dumps(
        {"group": group, "organs": list(members_names), "crop": list(crop), "settings": asdict(settings),
         "plan": asdict(plan), "init": str(init) if init else None}, indent=1))
    (run_dir / "data.json").write_text(json.dumps({"fold": fold, "cases": [meta["cases"][n] for n in train_ids],
                                                   "checkpoint_cases": [meta["cases"][n] for n in val_ids]},
                                                  indent=1))
    print(f"{label}organs {', '.join(members_names)}, crop {crop}, {len(train_ids)} training cases", flush=True)
    sampler = GroupSampler(images, targets, boxes, lut, crop, plan, seed=settings.seed + state["step"])
    rng = np.random.default_rng(settings.seed + 1 + state["step"])

    def batch_loss() -> torch.Tensor:
        ids = rng.choice(train_ids, settings.batch_size, replace=False)
        x, y = sampler.sample(ids)
        return partial_loss(net(x), y, torch.from_numpy(contoured[ids][:, members]))

    return run_loop(net, opt, state, run_dir, steps=settings.steps, seconds=settings.minutes * 60, lr=settings.lr,
                    val_every=settings.val_every, batch_loss=batch_loss, names=list(members_names),
                    validate=lambda: validate(net, images, targets, contoured, boxes, val_ids, lut, members, crop),
                    validate_first=True, label=label)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train one cascade group network (resumes from RUN/last.pt).")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="run folder (one per group)")
    ap.add_argument("--group", required=True, choices=sorted(GROUPS))
    ap.add_argument("--init", type=Path, help="start from this whole-scan cnn3d checkpoint")
    ap.add_argument("--fold", type=int, default=None,
                    help="train on the cases outside this cross-validation fold (the cache over all cases)")
    for f, v in asdict(CascadeSettings()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    a = ap.parse_args(argv)
    s = CascadeSettings(**{f: getattr(a, f) for f in asdict(CascadeSettings())})
    train_group(a.cache, a.run, a.group, s, init=a.init, fold=a.fold)


if __name__ == "__main__":
    main()
