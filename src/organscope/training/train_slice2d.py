"""Train the per-organ slice2d models (binary 2D Res-UNets) one after the other, export each to ONNX (checked
against ONNX Runtime) and write the engine's card.

Loss: binary cross-entropy + soft Dice per batch. Augmentation: the body box is jittered per case (data),
and each batch gets a random intensity scale/shift and small in-plane shifts. Validation: per-slice Dice on
the validation cases' slices, for the record; the engine's real validation is 3D (`organscope evaluate`).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engines.slice2d.preprocess import INPUT_SIZE, SLICE_MARGIN, window_for
from .slice2d_data import organ_slices
from .slice2d_net import ResUNet2d


def loss_fn(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + (1 - dice)


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    return x.clamp(0, 1)


def shift(x, y, rng, max_px=4):
    dx, dy = (int(v) for v in rng.integers(-max_px, max_px + 1, 2))
    return torch.roll(x, (dx, dy), dims=(2, 3)), torch.roll(y, (dx, dy), dims=(2, 3))


@torch.no_grad()
def slice_dice(net, x, y, batch=64) -> float:
    net.eval()
    inter = tot = 0.0
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch]).float() / 255
        p = (net(xb)[:, 0] > 0).numpy()
        t = y[i:i + batch].astype(bool)
        inter += np.logical_and(p, t).sum()
        tot += p.sum() + t.sum()
    net.train()
    return float(2 * inter / tot) if tot else float("nan")


def export(net, path: Path, atol: float = 1e-3) -> float:
    import onnxruntime as ort

    net.eval()
    x = torch.rand(3, 1, *INPUT_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(net, (x,), str(raw), input_names=["slices"], output_names=["logits"],
                          dynamic_axes={"slices": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(path)
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"slices": x.numpy()})[0]
    err = float(np.abs(ref - got).max())
    if err > atol:
        path.unlink()
        raise RuntimeError(f"ONNX export of {path.name} differs from torch by {err:.2e}")
    return err


def train_organ(images, targets, contoured, organ_index, organ, train_ids, val_ids, *, steps, batch, width, lr,
                seed=0, log=print):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, y = organ_slices(images, targets, contoured, organ_index, organ, train_ids, seed=seed)
    xv, yv = organ_slices(images, targets, contoured, organ_index, organ, val_ids, jitter=False)
    log(f"{organ}: {len(x)} training slices ({y.any(axis=(1, 2)).mean():.0%} with the organ), {len(xv)} validation")
    net = ResUNet2d(width)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps) ** 0.9
        idx = rng.integers(0, len(x), batch)
        xb = augment(torch.from_numpy(x[idx]).float() / 255, rng)
        yb = torch.from_numpy(y[idx]).float()[:, None]
        xb, yb = shift(xb, yb, rng)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"  {organ} step {step + 1} loss {float(loss):.4f} {time.time() - t0:.0f} s")
    d = slice_dice(net, xv, yv)
    log(f"{organ}: validation slice Dice {d:.4f} ({time.time() - t0:.0f} s)")
    return net.eval(), {"slices": int(len(x)), "steps": steps, "validation_slice_dice": d,
                        "seconds": round(time.time() - t0, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the per-organ slice2d models from the cnn3d cache.")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--organs", default="")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    meta = json.loads((a.cache / "cases.json").read_text())
    images = np.load(a.cache / "images.npy", mmap_mode="r")
    targets = np.load(a.cache / "targets.npy", mmap_mode="r")
    contoured = np.load(a.cache / "contoured.npy")
    train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train"]
    val_ids = [n for n, s in enumerate(meta["splits"]) if s == "validation"]
    organs = [o for o in meta["organs"] if not a.organs or o in a.organs.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    card_path = a.out / "slice2d_openkbp.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {
        "name": "slice2d_openkbp", "engine": "slice2d", "format": "onnx (one file per organ)",
        "input_size": list(INPUT_SIZE), "slice_margin_training": SLICE_MARGIN, "organs": {}}
    for organ in organs:
        i = meta["organs"].index(organ)
        net, info = train_organ(images, targets, contoured, i, organ, train_ids, val_ids, steps=a.steps,
                                batch=a.batch, width=a.width, lr=a.lr, log=lambda s: print(s, flush=True))
        path = a.out / f"slice2d_openkbp_{organ}.onnx"
        info["onnx_parity_max_abs_diff"] = export(net, path)
        info.update(file=path.name, window_hu=list(window_for(organ)), width=a.width,
                    parameters=sum(p.numel() for p in net.parameters()))
        card["organs"][organ] = info
        card_path.write_text(json.dumps(card, indent=1))
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
