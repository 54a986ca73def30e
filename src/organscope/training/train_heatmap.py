"""Train the heat-map localiser (one Gaussian heat-map per organ, sigma^2 = 150 mm^2, L2 loss) on the cnn3d
cache halved to the 64^3 coarse grid (voxels near a centroid weighted up: FG_WEIGHT), export it to ONNX,
and compare it with the sparse-grid localiser on the validation cases: centroid error (mm and coarse-grid
voxels), box recall (fraction of each organ's voxels inside its box), presence errors and seconds per scan.

    python -m organscope.training.train_heatmap --cache work/cnn3d/cache --data ../shared/data/openkbp \
        --out work/heatmap [--steps 1500] [--install]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets import Dataset
from ..engines.cnn3d.preprocess import resample, windows
from ..geometry import canonical_transform, oriented_affine, scale_affine
from ..localize.heatmap import GRID, SIGMA2_MM2, TAU, gaussian_heatmap
from .cnn3d_data import N_SPECIAL
from .cnn3d_net import Cnn3dNet


def coarse_set(cache: Path, data_root: Path):
    """Per cached case: (2, 64, 64, 64) windows, (organs, 64^3) target heat-maps, (organs,) known mask."""
    import nibabel as nib

    meta = json.loads((cache / "cases.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    contoured = np.load(cache / "contoured.npy")
    ds = Dataset(data_root)
    cases = {c.case_id: c for c in ds.cases}
    xs, hs, known = [], [], []
    for n, cid in enumerate(meta["cases"]):
        img = nib.load(str(cases[cid].image_path))
        canon_aff = oriented_affine(img.affine, canonical_transform(img.affine), img.shape)
        grid_aff = scale_affine(canon_aff, np.array(images.shape[1:]) / np.array(GRID))
        xs.append(windows(resample(np.asarray(images[n]), GRID)).astype(np.float16))
        t = np.asarray(targets[n])
        heat = np.zeros((len(meta["organs"]),) + GRID, np.float16)
        k = contoured[n].copy()
        for o in range(len(meta["organs"])):
            vox = np.argwhere(t == o + N_SPECIAL)
            if not len(vox):
                continue  # contoured but absent (cut off): a target of zeros is right
            c_mm = canon_aff[:3, :3] @ vox.mean(0) + canon_aff[:3, 3]
            heat[o] = gaussian_heatmap(GRID, grid_aff, c_mm, SIGMA2_MM2)
        xs_known = k
        hs.append(heat)
        known.append(xs_known)
    return meta, np.stack(xs), np.stack(hs), np.stack(known)


#: L2 weight of a voxel: 1 + FG_WEIGHT * target. With the paper's plain L2 (FG_WEIGHT 0) a first 1200-step run
#: learnt to output ~0 everywhere (an organ's Gaussian covers ~30 of the 262,144 coarse voxels, so zero is almost
#: optimal): its peaks were noise, 94 mm from the organs (median). Weighting the voxels near a centroid makes
#: missing a peak cost as much as the whole background.
FG_WEIGHT = 200.0


def train(x, h, known, train_ids, *, steps: int, batch: int = 4, width: int = 8, lr: float = 1e-3, seed: int = 0,
          fg_weight: float = FG_WEIGHT, init: Path | None = None, log=print) -> Cnn3dNet:
    """`init`: a cnn3d segmentation checkpoint of the same width; every weight but the last layer's is copied
    (its features already tell the organs apart; a network from scratch, 21 minutes of CPU with the weighted L2,
    still put its peaks at one blurred common place, 83 mm from the organs)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Cnn3dNet(h.shape[1], width=width)
    # the last layer starts at zero: a randomly initialised one outputs +-1 everywhere, and the loss spent the
    # first ~1500 steps (all a CPU run had) reaching the all-zero output, whose peaks are then noise
    torch.nn.init.zeros_(net.head[2].weight)
    torch.nn.init.zeros_(net.head[2].bias)
    if init is not None:
        own = net.state_dict()
        src = torch.load(init, weights_only=False)["net"]
        own.update({k: v for k, v in src.items() if k in own and own[k].shape == v.shape})
        net.load_state_dict(own)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps) ** 0.9
        ids = rng.choice(train_ids, batch, replace=False)
        shift = tuple(int(v) for v in rng.integers(-3, 4, 3))
        xb = torch.roll(torch.from_numpy(x[ids].astype(np.float32)), shift, dims=(2, 3, 4))
        hb = torch.roll(torch.from_numpy(h[ids].astype(np.float32)), shift, dims=(2, 3, 4))
        mask = torch.from_numpy(known[ids]).float()[:, :, None, None, None]
        w = mask * (1.0 + fg_weight * hb)
        loss = (((net(xb) - hb) ** 2) * w).sum() / (w.sum() + 1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1} loss {float(loss.detach()):.5f} {time.time() - t0:.0f} s")
    return net.eval()


def export(net, path: Path) -> float:
    import onnxruntime as ort

    x = torch.rand(1, 2, *GRID)
    torch.onnx.export(net, (x,), str(path), input_names=["windows"], output_names=["heatmaps"],
                      opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"windows": x.numpy()})[0]
    return float(np.abs(ref - got).max())


def compare(data_root: Path, heat_model: Path | None, cases) -> dict:
    """Centroid error, box recall, presence errors and time of both localisers on labelled cases."""
    from ..localize import sparse_grid
    from ..localize.heatmap import HeatmapLocalizer

    ds = Dataset(data_root)
    locators = {"sparse_grid": lambda v, t: sparse_grid.locate(v, timings=t)}
    if heat_model is not None:
        hl = HeatmapLocalizer(heat_model)
        locators["heatmap"] = lambda v, t: hl.locate(v, timings=t)
    rows = {k: {"err_mm": [], "err_vox": [], "recall": [], "missed": 0, "false": 0, "seconds": []} for k in locators}
    for case in cases:
        vol, lab = case.load_image(), case.load_labels()
        coarse_mm = vol.spacing_mm * np.array(vol.shape) / np.array(GRID)
        for name, fn in locators.items():
            t: dict = {}
            locs = fn(vol, t)
            r = rows[name]
            r["seconds"].append(t["total"])
            for organ in case.organs:
                mask = lab.array == ds.label_map.ids[organ]
                loc = locs.get(organ)
                if not mask.any():
                    r["false"] += int(loc is not None and loc.present)
                    continue
                if loc is None or not loc.present:
                    r["missed"] += 1
                    continue
                true_c = vol.voxel_to_world(np.argwhere(mask).mean(0)[None])[0]
                d = np.array(loc.centroid_mm) - true_c
                r["err_mm"].append(float(np.linalg.norm(d)))
                r["err_vox"].append(float(np.linalg.norm(d / coarse_mm)))
                lo, hi = np.array(loc.box_voxels)
                inside = mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1].sum()
                r["recall"].append(float(inside / mask.sum()))
    out = {}
    for name, r in rows.items():
        out[name] = {"median_centroid_error_mm": float(np.median(r["err_mm"])),
                     "median_centroid_error_coarse_voxels": float(np.median(r["err_vox"])),
                     "mean_box_recall": float(np.mean(r["recall"])),
                     "fraction_boxes_recall_ge_0.98": float(np.mean(np.array(r["recall"]) >= 0.98)),
                     "missed": r["missed"], "false_present": r["false"],
                     "median_seconds": float(np.median(r["seconds"]))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("work/heatmap"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fg-weight", type=float, default=FG_WEIGHT)
    ap.add_argument("--init", type=Path, default=None, help="cnn3d checkpoint to start from (same --width)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    meta, x, h, known = coarse_set(a.cache, a.data)
    train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train"]
    net = train(x, h, known, train_ids, steps=a.steps, batch=a.batch, width=a.width, fg_weight=a.fg_weight, init=a.init,
                log=lambda s: print(s, flush=True))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "heatmap_openkbp.onnx"
    err = export(net, path)
    card = {"name": "heatmap_openkbp", "engine": "locate", "organs": meta["organs"], "grid": list(GRID),
            "sigma2_mm2": SIGMA2_MM2, "tau": TAU, "box_margin_mm": 10.0, "onnx_parity_max_abs_diff": err,
            "training": {"data": "OpenKBP training split", "steps": a.steps, "batch": a.batch, "width": a.width,
                         "loss": "L2, voxel weight 1 + fg_weight * target, uncontoured organs masked",
                         "fg_weight": a.fg_weight, "init": str(a.init) if a.init else None}}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    with tempfile.TemporaryDirectory():
        card["validation"] = compare(a.data, path, Dataset(a.data).split("validation"))
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    print(json.dumps(card["validation"], indent=1))
    if a.install:
        import shutil

        from ..localize.heatmap import MODELS_DIR
        shutil.copy2(path, MODELS_DIR / path.name)
        shutil.copy2(path.with_suffix(".json"), MODELS_DIR / path.with_suffix(".json").name)


if __name__ == "__main__":
    main()
