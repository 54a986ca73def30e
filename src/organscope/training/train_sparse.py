"""Train the sparse point classifier on a set built by `sparse_data.build`, with checkpoints (resumable),
then export the best epoch (by validation partial-label loss) to ONNX."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .onnx_weights import load_sparse_onnx
from .sparse_model import Q8_PER_UNIT, ResidualMLP, partial_label_loss


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 16
    batch_size: int = 1024
    lr: float = 3e-4
    lr_min: float = 1e-6
    weight_decay_l2: float = 1e-5
    l1: float = 1e-5
    dropout: float = 0.25
    width: int = 128
    n_blocks: int = 4
    seed: int = 0
    threads: int = 2


def _load(set_dir: Path):
    y = np.load(set_dir / "y.npy")
    X = np.load(set_dir / "X.npy", mmap_mode="r")[: len(y)]  # the file may be pre-allocated longer
    return X, y, np.load(set_dir / "allowed.npy").astype(np.int64)


def evaluate_points(net, X, bits, batch=4096):
    net.eval()
    losses, preds = [], []
    with torch.no_grad():
        for s in range(0, len(X), batch):
            x = torch.from_numpy(np.asarray(X[s:s + batch])).float() / Q8_PER_UNIT
            logits = net(x)
            losses.append(partial_label_loss(logits, torch.from_numpy(bits[s:s + batch])).item() * len(x))
            preds.append(logits.argmax(1).numpy())
    net.train()
    return sum(losses) / len(X), np.concatenate(preds)


def train(train_source, val_dir: Path, run_dir: Path, settings: TrainSettings, n_classes: int, *,
          init_onnx: Path | None = None) -> Path:
    """`train_source`: a folder written by sparse_data.build (a fixed set), or an EpochSampler (fresh points and
    transforms each epoch). `init_onnx`: start from an exported model's weights (a fine-tune; with the
    settings' lr as the start of its cosine schedule)."""
    from .sparse_data import EpochSampler

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = train_source if isinstance(train_source, EpochSampler) else None
    if sampler is None:
        X_np, y, bits = _load(train_source)
        X_np = np.ascontiguousarray(X_np)
    else:
        X_np = np.empty((sampler.size, sampler.pattern.size), dtype=np.int8)
    Xv, yv, bitsv = _load(val_dir)
    X = torch.from_numpy(X_np)
    if sampler is not None:
        data = {"cases": [c["case"] for c in sampler.cases], "plan": asdict(sampler.plan), "n": sampler.size,
                "fresh_points_every_epoch": True}
    else:
        data = json.loads((Path(train_source) / "info.json").read_text())
    (run_dir / "data.json").write_text(json.dumps(data, indent=1))
    net = ResidualMLP(X.shape[1], n_classes, width=settings.width, n_blocks=settings.n_blocks,
                      dropout=settings.dropout)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay_l2)
    steps_per_epoch = len(X) // settings.batch_size  # X's length is fixed: same count every epoch
    total = steps_per_epoch * settings.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (settings.lr_min + 0.5 * (settings.lr - settings.lr_min) * (1 + math.cos(math.pi * s / total)))
        / settings.lr)
    ckpt = run_dir / "last.pt"
    start_epoch, history, best = 0, [], float("inf")
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        print(f"resumed after epoch {state['epoch']}", flush=True)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(start_epoch):
        torch.randperm(len(X), generator=gen)
    if start_epoch == 0 and init_onnx is not None:
        diff = load_sparse_onnx(net, init_onnx)
        print(f"started from {init_onnx.name} (largest logit difference to it: {diff:.3g})", flush=True)
        data["init_onnx"] = str(init_onnx.name)
        (run_dir / "data.json").write_text(json.dumps(data, indent=1))
    l1_params = [p for n, p in net.named_parameters() if n.endswith("weight") and p.ndim == 2]
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.time()
        if sampler is not None:
            y, bits, _ = sampler.fill(X_np, np.random.default_rng([settings.seed, epoch]))
            print(f"sampled {len(y)} fresh points in {time.time() - t0:.0f} s", flush=True)
        bits_t = torch.from_numpy(bits.astype(np.int64))
        perm = torch.randperm(len(X), generator=gen)
        run_loss = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", mininterval=10)
        for step in bar:
            idx = perm[step * settings.batch_size:(step + 1) * settings.batch_size]
            xb = X[idx].float() / Q8_PER_UNIT
            loss = partial_label_loss(net(xb), bits_t[idx])
            reg = settings.l1 * sum(p.abs().sum() for p in l1_params)
            opt.zero_grad(set_to_none=True)
            (loss + reg).backward()
            opt.step()
            sched.step()
            run_loss += loss.item()
            if step % 200 == 0:
                bar.set_postfix(loss=f"{run_loss / (step + 1):.4f}")
        val_loss, pred = evaluate_points(net, Xv, bitsv)
        known = (bitsv & (bitsv - 1)) == 0  # exactly one allowed class
        acc = float((pred[known] == yv[known]).mean())
        history.append({"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch, "val_loss": val_loss,
                        "val_point_accuracy": acc, "seconds": time.time() - t0,
                        "class_fraction": (np.bincount(y, minlength=n_classes) / len(y)).round(6).tolist()})
        print(json.dumps(history[-1]), flush=True)
        if val_loss < best:
            best = val_loss
            torch.save({"net": net.state_dict(), "epoch": epoch, "history": history}, run_dir / "best.pt")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                    "history": history, "best": best}, ckpt)
        (run_dir / "history.json").write_text(json.dumps({"settings": asdict(settings), "history": history,
                                                          "n_classes": n_classes, "n_in": int(X.shape[1])}, indent=1))
    (run_dir / "settings.json").write_text((run_dir / "history.json").read_text())
    return run_dir / "best.pt"


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Train the sparse point classifier (resumes from RUN/last.pt).")
    ap.add_argument("--train", type=Path, default=None, help="fixed set written by sparse_data.build")
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    ap.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    ap.add_argument("--threads", type=int, default=TrainSettings.threads,
                    help="torch threads (1 is faster when another job shares a 2-core machine)")
    ap.add_argument("--resample-from", type=Path, default=None,
                    help="dataset folder: draw fresh points every epoch instead of using --train's fixed set")
    ap.add_argument("--strong-augmentation", action="store_true",
                    help="80 %% of chunks transformed, rotations to 12 deg, scaling 12 %%, HU scale 5 %% / shift 20")
    ap.add_argument("--weight-decay", type=float, default=TrainSettings.weight_decay_l2)
    ap.add_argument("--lr", type=float, default=TrainSettings.lr)
    ap.add_argument("--init-onnx", type=Path, default=None,
                    help="start from this exported model's weights (e.g. the shipped sparse_openkbp.onnx)")
    ap.add_argument("--fold", type=int, default=None,
                    help="train on the cases outside this cross-validation fold (training/folds.py, 5 folds over "
                         "every case of --resample-from), whatever their split")
    ap.add_argument("--all-cases", action="store_true",
                    help="train on every case of --resample-from, whatever its split: the model shipped after "
                         "cross-validation chose its settings (--val then only monitors, on training patients)")
    ap.add_argument("--cut-fraction", type=float, default=0.0,
                    help="fraction of point chunks read as from a scan whose in-plane field of view is cut to "
                         "200-400 mm (samples outside it read 0, as outside a scan)")
    ap.add_argument("--flip-fraction", type=float, default=0.0,
                    help="fraction of point chunks read left-right mirrored, left and right organs swapped")
    ap.add_argument("--elastic-fraction", type=float, default=0.0,
                    help="fraction of point chunks whose pattern is also deformed by a smooth random displacement "
                         "field (elastic augmentation; SamplingPlan.elastic_mm / elastic_grid_mm)")
    ap.add_argument("--width", type=int, default=TrainSettings.width, help="hidden units of the residual MLP")
    ap.add_argument("--points-scale", type=float, default=1.0,
                    help="with --resample-from: fresh points drawn per case every epoch, as a multiple of the plan's "
                         "(body, edge band and class-balanced points scaled alike)")
    a = ap.parse_args(argv)
    if a.all_cases and a.fold is not None:
        ap.error("--all-cases and --fold exclude each other: a fold's model leaves that fold's cases out")
    if (a.all_cases or a.fold is not None) and a.resample_from is None:
        ap.error("--all-cases and --fold choose cases of --resample-from, which is missing")
    source = a.train
    if a.resample_from is not None:
        from ..sampling.pattern import paper_pattern
        from .sparse_data import SHIPPED_PLAN, EpochSampler, SamplingPlan

        from dataclasses import replace

        plan = SHIPPED_PLAN if a.strong_augmentation else SamplingPlan()
        plan = replace(plan, cut_fraction=a.cut_fraction, flip_fraction=a.flip_fraction,
                       elastic_fraction=a.elastic_fraction,
                       n_body=round(plan.n_body * a.points_scale), n_band=round(plan.n_band * a.points_scale),
                       n_balanced=round(plan.n_balanced * a.points_scale))
        cases = None
        if a.fold is not None:
            from .folds import fold_cases

            cases = fold_cases(a.resample_from, a.fold)[0]
        elif a.all_cases:
            from ..datasets import Dataset

            cases = [c.case_id for c in Dataset(a.resample_from).cases]
        source = EpochSampler(a.resample_from, paper_pattern(), plan, cases=cases)
    train(source, a.val, a.run, TrainSettings(epochs=a.epochs, batch_size=a.batch_size, threads=a.threads,
                                              weight_decay_l2=a.weight_decay, lr=a.lr, width=a.width), a.classes,
          init_onnx=a.init_onnx)


if __name__ == "__main__":
    main()
