"""Train the heat-map localiser (one Gaussian heat-map per organ on the 64^3 coarse grid, sigma^2 = 150 mm^2,
L2 loss with voxels near a centroid weighted up: FG_WEIGHT) from the cnn3d cache (input: the 128^3 grid, random
96^3 crops, one scan per step), resumably; export it to ONNX and compare it with the sparse-grid localiser on
the validation cases: centroid error (mm and coarse-grid voxels), box recall (fraction of each organ's voxels
inside its box), presence errors and seconds per scan.

    python -m organscope.training.train_heatmap --cache work/cnn3d/cache --data ../shared/data/openkbp \
        --out work/heatmap --init work/cnn3d/run5/best.pt [--minutes 60] [--install]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import Dataset
from ..engines.cnn3d.preprocess import GRID as INPUT_GRID, SPACING_MM, WINDOWS_HU
from ..grid import resample
from ..intensity import windows
from ..geometry import canonical_transform, oriented_affine, scale_affine
from ..localize.heatmap import GRID, SIGMA2_MM2, TAU, gaussian_heatmap
from .cnn3d_data import N_SPECIAL
from .cnn3d_net import Cnn3dNet
from .onnx_weights import freeze_batchnorm, load_onnx_weights


class HeatmapNet(Cnn3dNet):
    """The cnn3d network with one output channel per organ, averaged 2x2x2 down to the coarse grid: it reads
    the scan on the cnn3d grid (128^3), so the cnn3d segmentation weights, which already tell the organs apart
    there, are a starting point (same parameter names). Earlier networks read the coarse 64^3 grid itself and
    learnt from scratch (or from cnn3d weights at a scale they were not trained for): after 1000-1500 CPU steps
    their peaks were 56-94 mm from the organs (median)."""

    def forward(self, x):
        return F.avg_pool3d(super().forward(x), 2)


def heatmap_set(cache: Path, data_root: Path):
    """Per cached case: HU on the cnn3d grid (int16, as cached), (organs, *coarse grid) target heat-maps
    (float16), the (organs,) contoured mask, the cached class maps and the grid's affine (OpenKBP's scans are
    their own 128^3 canonical grid)."""
    import nibabel as nib

    meta = json.loads((cache / "cases.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    contoured = np.load(cache / "contoured.npy")
    ds = Dataset(data_root)
    cases = {c.case_id: c for c in ds.cases}
    hs, affines = [], []
    for n, cid in enumerate(meta["cases"]):
        img = nib.load(str(cases[cid].image_path))
        canon_aff = oriented_affine(img.affine, canonical_transform(img.affine), img.shape)
        affines.append(canon_aff)
        grid_aff = scale_affine(canon_aff, np.array(images.shape[1:]) / np.array(GRID))
        t = np.asarray(targets[n])
        heat = np.zeros((len(meta["organs"]),) + GRID, np.float16)
        for o in range(len(meta["organs"])):
            vox = np.argwhere(t == o + N_SPECIAL)
            if len(vox):  # contoured but absent (cut off): a target of zeros is right
                heat[o] = gaussian_heatmap(GRID, grid_aff, canon_aff[:3, :3] @ vox.mean(0) + canon_aff[:3, 3],
                                           SIGMA2_MM2)
        hs.append(heat)
    return meta, np.ascontiguousarray(images), np.stack(hs), contoured, targets, np.stack(affines)


def cut_sample(image, target, affine, start: int, slices: int, heat_shape, n_organs: int):
    """A scan cut to `slices` slices from `start` along axis 2 (superior-inferior on the canonical grid) and
    resampled back to the full grid, as the engines resample a short scan: (HU, target heat-maps of the organs'
    remaining parts; zeros for an organ cut away)."""
    size = np.array(image.shape)
    img = resample(np.asarray(image[:, :, start:start + slices]), tuple(int(v) for v in size))
    tgt = np.asarray(target[:, :, start:start + slices])
    shifted = np.array(affine, float) @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, start], [0, 0, 0, 1.0]])
    fine = scale_affine(shifted, (1.0, 1.0, slices / size[2]))
    coarse = scale_affine(fine, size / np.array(heat_shape))
    heat = np.zeros((n_organs,) + tuple(heat_shape), np.float32)
    for o in range(n_organs):
        vox = np.argwhere(tgt == o + N_SPECIAL)
        if len(vox):
            heat[o] = gaussian_heatmap(tuple(heat_shape), coarse, shifted[:3, :3] @ vox.mean(0) + shifted[:3, 3],
                                       SIGMA2_MM2)
    return img, heat


def organ_cut(target, known, rng, min_slices: int = 24, max_gap: int = 6):
    """(start, slices) of a cut along axis 2 that removes one organ wholly: all slices from 1..max_gap past one
    end of a random contoured organ onwards are dropped (or all before it), the rest kept if it is at least
    `min_slices` long; None when no organ of the case allows one. Clinical scans often start or end inside the
    neck, so the heat-map network must learn that an organ outside the field of view has no peak."""
    t = np.asarray(target)
    organs = [o for o in np.flatnonzero(known) if (t == o + N_SPECIAL).any()]
    rng.shuffle(organs)
    n = t.shape[2]
    for o in organs:
        ks = np.flatnonzero((t == o + N_SPECIAL).any(axis=(0, 1)))
        gap = int(rng.integers(1, max_gap + 1))
        sides = [("after", ks.max() + gap), ("before", ks.min() - gap)]
        rng.shuffle(sides)
        for side, k in sides:
            if side == "after" and n - (k + 1) >= min_slices:
                return int(k + 1), int(n - k - 1)
            if side == "before" and k >= min_slices:
                return 0, int(k)
    return None


#: L2 weight of a voxel: 1 + fg_weight * target. With the paper's plain L2 (0) a first 1200-step run from scratch
#: learnt to output ~0 everywhere (an organ's Gaussian covers ~30 of the 262,144 coarse voxels, so zero is almost
#: optimal). Weighting the voxels near a centroid makes missing a peak costly; too high a weight makes broad
#: blobs cheap (200: regions above tau of 2000-5000 coarse voxels where the target's has ~270).
FG_WEIGHT = 20.0


def heatmap_loss(pred, target, mask, fg_weight: float = FG_WEIGHT, fp_weight: float = 0.0):
    """Weighted L2 over (batch, organs, *grid); mask (batch, organs, 1, 1, 1): 0 for an uncontoured organ. A
    voxel weighs 1 + fg_weight * target (a missed peak is costly) + fp_weight * prediction (a false peak is:
    an organ cut away, or a look-alike elsewhere, which the target-only weight barely charges since its target
    is 0 there); the weight itself is not differentiated."""
    w = mask * (1.0 + fg_weight * target + fp_weight * pred.detach().clamp(0, 1))
    return (((pred - target) ** 2) * w).sum() / (w.sum() + 1e-6)


def train(images, heat, known, train_ids, *, steps: int, minutes: float = 1e9, crop: int = 96, width: int = 16,
          lr: float = 5e-4, seed: int = 0, fg_weight: float = FG_WEIGHT, init: Path | None = None,
          run_dir: Path | None = None, cut_prob: float = 0.0, targets=None, affines=None, min_slices: int = 40,
          organ_cut_share: float = 0.0, fp_weight: float = 0.0, log=print) -> HeatmapNet:
    """images: (cases, D, H, W) HU on the input grid; heat: (cases, organs, D/2, H/2, W/2) targets. One random
    crop (crop^3 voxels of the input grid, at even offsets, so that the targets crop exactly) per step; the
    learning rate decays over whichever runs out first, steps or minutes. `init`: a cnn3d checkpoint of the
    same width, every weight but the last layer's copied, batch-norm statistics kept (or a heat-map checkpoint,
    or a shipped heat-map ONNX model, `onnx_weights`: every weight). `run_dir`: resume from and checkpoint to run_dir/last.pt every 100 steps. `cut_prob`: the
    fraction of steps on a scan cut to `min_slices`..all slices (`cut_sample`; needs `targets` and `affines`):
    a network trained on whole head-and-neck scans only put a 'mandible' at peak 0.63 in a scan cut 28 slices
    below it, stretched to the grid; 800 steps of random cuts left it at 0.61, as few random windows cut an organ
    away. `organ_cut_share`: the fraction of those cuts made to remove one organ wholly (`organ_cut`).
    `fp_weight`: the weight of voxels by their predicted value (false peaks)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = HeatmapNet(heat.shape[1], width=width)
    # the last layer starts at zero: a randomly initialised one outputs +-1 everywhere, and the loss spent the
    # first ~1500 steps (all a CPU run had) reaching the all-zero output, whose peaks are then noise
    torch.nn.init.zeros_(net.head[2].weight)
    torch.nn.init.zeros_(net.head[2].bias)
    if init is not None and Path(init).suffix == ".onnx":  # a shipped heat-map model: go on from it
        log(f"weights from {init} (largest difference to its ONNX output {load_onnx_weights(net, Path(init)):.1e})")
    elif init is not None:
        own = net.state_dict()
        src = torch.load(init, weights_only=False)["net"]
        own.update({k: v for k, v in src.items() if k in own and own[k].shape == v.shape})
        net.load_state_dict(own)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    step, elapsed = 0, 0.0
    last = run_dir / "last.pt" if run_dir is not None else None
    if last is not None and last.exists():
        ck = torch.load(last, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed_s"]
        rng = np.random.default_rng(seed + step)
        log(f"resumed at step {step}")
    size = np.array(images.shape[1:])
    crop_v = np.minimum(size, crop) // 16 * 16  # the network needs multiples of 16
    t0 = time.time() - elapsed
    losses: list[float] = []
    while step < steps and time.time() - t0 < minutes * 60:
        done = max(step / steps, (time.time() - t0) / (minutes * 60))
        for g in opt.param_groups:
            g["lr"] = lr * (1 - min(done, 0.999)) ** 0.9
        net.train()
        if init is not None:
            freeze_batchnorm(net)  # a pretrained network's statistics (batches of one scan would replace them)
        n = int(rng.choice(train_ids))
        img, h_n = images[n], heat[n]
        if cut_prob and rng.random() < cut_prob:
            window = organ_cut(targets[n], known[n], rng) if rng.random() < organ_cut_share else None
            if window is None:
                k = int(rng.integers(min(min_slices, size[2]), size[2] + 1))
                window = (int(rng.integers(0, size[2] - k + 1)), k)
            img, h_n = cut_sample(images[n], targets[n], affines[n], *window, heat.shape[2:], heat.shape[1])
        o = (rng.integers(0, (size - crop_v) // 2 + 1) * 2).astype(int)
        sl = tuple(slice(a, a + c) for a, c in zip(o, crop_v))
        sl2 = tuple(slice(a // 2, (a + c) // 2) for a, c in zip(o, crop_v))
        xb = torch.from_numpy(windows(np.asarray(img[sl], np.float32), WINDOWS_HU)[None])
        hb = torch.from_numpy(np.asarray(h_n[(slice(None),) + sl2], np.float32)[None])
        mask = torch.from_numpy(np.asarray(known[n])).float()[None, :, None, None, None]
        loss = heatmap_loss(net(xb), hb, mask, fg_weight, fp_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"step {step} loss {np.mean(losses[-50:]):.5f} {time.time() - t0:.0f} s")
        if last is not None and (step % 100 == 0 or step == steps):
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed_s": time.time() - t0}, last)
    if last is not None and losses:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed_s": time.time() - t0},
                   last)
    net.steps_done = step
    return net.eval()


def export(net, path: Path, input_grid=INPUT_GRID) -> float:
    import onnxruntime as ort

    x = torch.rand(1, 2, *input_grid)
    torch.onnx.export(net, (x,), str(path), input_names=["windows"], output_names=["heatmaps"],
                      opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"windows": x.numpy()})[0]
    return float(np.abs(ref - got).max())


def compare(data_root: Path, heat_model: Path | None, cases, sparse: bool = True) -> dict:
    """Centroid error, box recall, presence errors and time of both localisers on labelled cases."""
    from ..engines.sparse.locate import locate as sparse_grid_locate
    from ..localize.heatmap import HeatmapLocalizer

    ds = Dataset(data_root)
    locators = {"sparse_grid": lambda v, t: sparse_grid_locate(v, timings=t)} if sparse else {}
    if heat_model is not None:
        hl = HeatmapLocalizer(heat_model)
        locators["heatmap"] = lambda v, t: hl.locate(v, timings=t)
    rows = {k: {"err_mm": [], "err_vox": [], "recall": [], "box_ml": [], "missed": 0, "false": 0, "seconds": []}
            for k in locators}
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
                r["box_ml"].append(float(np.prod(hi - lo + 1) * np.prod(vol.spacing_mm)) / 1000)
    out = {}
    for name, r in rows.items():
        out[name] = {"median_centroid_error_mm": float(np.median(r["err_mm"])),
                     "median_centroid_error_coarse_voxels": float(np.median(r["err_vox"])),
                     "mean_box_recall": float(np.mean(r["recall"])),
                     "fraction_boxes_recall_ge_0.98": float(np.mean(np.array(r["recall"]) >= 0.98)),
                     "median_box_ml": float(np.median(r["box_ml"])),
                     "missed": r["missed"], "false_present": r["false"],
                     "median_seconds": float(np.median(r["seconds"]))}
    return out


def fit_box_half_extents(model: Path, data_root: Path, cases, voxel_quantile: float = 0.995,
                         case_quantile: float = 0.95) -> dict[str, list[float]]:
    """Per organ and world axis, the box half-extent (mm) around the network's centroid that holds the organ:
    per case the `voxel_quantile` of its voxels' distance from the predicted centroid along the axis (so a box
    of that half-extent holds >= ~98.5 % of the organ), then the `case_quantile` over the cases. The paper's
    mean extent + margin ignores both the spread of organ sizes and the centroid error."""
    from ..localize.heatmap import HeatmapLocalizer

    ds = Dataset(data_root)
    hl = HeatmapLocalizer(model)
    per_organ: dict[str, list[np.ndarray]] = {}
    for case in cases:
        vol, lab = case.load_image(), case.load_labels()
        locs = hl.locate(vol)
        for organ in case.organs:
            mask = lab.array == ds.label_map.ids[organ]
            loc = locs.get(organ)
            if not mask.any() or loc is None or not loc.present:
                continue
            d = np.abs(vol.voxel_to_world(np.argwhere(mask)) - np.array(loc.centroid_mm))
            per_organ.setdefault(organ, []).append(np.quantile(d, voxel_quantile, axis=0))
    return {o: [round(float(v), 1) for v in np.quantile(np.stack(d), case_quantile, axis=0)]
            for o, d in per_organ.items()}


def _cut(vol, lab, keep_below_mm: float | None = None, keep_above_mm: float | None = None):
    """The scan and labels with only the slices (along the axis closest to world z) whose centre lies below /
    above a world z; None if nothing is left."""
    from ..sampling.points import superior_axis
    from ..volume import Volume

    k = superior_axis(vol.affine)
    idx = np.arange(vol.shape[k])
    z = vol.affine[2, k] * idx + vol.affine[2, 3] + sum(vol.affine[2, a] * (vol.shape[a] - 1) / 2
                                                        for a in range(3) if a != k)
    keep = np.ones(len(idx), bool)
    if keep_below_mm is not None:
        keep &= z < keep_below_mm
    if keep_above_mm is not None:
        keep &= z > keep_above_mm
    if keep.sum() < 16:
        return None
    lo, hi = int(idx[keep].min()), int(idx[keep].max()) + 1
    sl = tuple(slice(lo, hi) if a == k else slice(None) for a in range(3))
    shift = np.eye(4)
    shift[k, 3] = lo
    aff = vol.affine @ shift
    return (Volume(np.ascontiguousarray(vol.array[sl]), aff), Volume(np.ascontiguousarray(lab.array[sl]), aff))


def fit_presence_threshold(model: Path, data_root: Path, cases, candidates=np.round(np.arange(0.05, 0.61, 0.05), 2),
                           margin: float = 0.1):
    """The heat-map peak below which an organ is reported absent, from training scans: each scan whole (its
    organs are present) and cut twice, keeping what lies 5 mm below the larynx and 5 mm above the mandible (the
    organs wholly cut away are absent there). The threshold with the most right calls (present organs whose
    peak clears it by `margin`, plus absent ones under it, as fractions) wins; ties go to the lower one. The
    paper's tau = 0.1 let a scan cut below the larynx keep a 'mandible' at peak 0.14; without the margin the
    fit chose 0.55, 0.02 under the lowest present peak of the training cases (0.57)."""
    from ..localize.heatmap import HeatmapLocalizer

    ds = Dataset(data_root)
    hl = HeatmapLocalizer(model)
    present, absent = [], []

    def peaks(vol):
        return dict(zip(hl.organs, hl.heatmaps(vol)[0].reshape(len(hl.organs), -1).max(1)))

    for case in cases:
        vol, lab = case.load_image(), case.load_labels()
        p = peaks(vol)
        zs = {}
        for organ in case.organs:
            m = lab.array == ds.label_map.ids[organ]
            if m.any() and organ in p:
                present.append(float(p[organ]))
                zs[organ] = vol.voxel_to_world(np.argwhere(m))[:, 2]
        cuts = []
        if "larynx" in zs:
            cuts.append(_cut(vol, lab, keep_below_mm=float(zs["larynx"].min()) - 5))
        if "mandible" in zs:
            cuts.append(_cut(vol, lab, keep_above_mm=float(zs["mandible"].max()) + 5))
        for c in cuts:
            if c is None:
                continue
            cv, cl = c
            pc = peaks(cv)
            for organ in zs:
                if not (cl.array == ds.label_map.ids[organ]).any():
                    absent.append(float(pc[organ]))
    present_a, absent_a = np.array(present), np.array(absent)
    right = [np.mean(present_a >= t + margin) + (np.mean(absent_a < t) if len(absent_a) else 0.0) for t in candidates]
    tau = float(candidates[int(np.argmax(right))])
    return tau, {"margin": margin, "present_peaks": len(present), "absent_peaks": len(absent),
                 "present_kept": float(np.mean(present_a >= tau)),
                 "absent_refused": float(np.mean(absent_a < tau)) if len(absent_a) else None,
                 "present_peak_p1": float(np.quantile(present_a, 0.01)),
                 "absent_peak_p99": float(np.quantile(absent_a, 0.99)) if len(absent_a) else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("work/heatmap"), help="run folder: last.pt, ONNX, card")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=60.0, help="time budget (0: export the last checkpoint)")
    ap.add_argument("--crop", type=int, default=96, help="training crop, voxels of the 128^3 input grid")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--fg-weight", type=float, default=FG_WEIGHT)
    ap.add_argument("--init", type=Path, default=None,
                    help="cnn3d or heat-map checkpoint (.pt), or a shipped heat-map model (.onnx), to start from")
    ap.add_argument("--cut-prob", type=float, default=0.5, help="fraction of steps on a scan cut short (cut_sample)")
    ap.add_argument("--organ-cut-share", type=float, default=0.5,
                    help="fraction of the cuts made to remove one organ wholly (organ_cut)")
    ap.add_argument("--fp-weight", type=float, default=FG_WEIGHT, help="L2 weight of voxels by predicted value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--box-quantile", type=float, default=0.95,
                    help="box half-extents: this quantile over the training cases (fit_box_half_extents)")
    ap.add_argument("--quick", action="store_true", help="score every third validation case, heat-map only")
    ap.add_argument("--fold", type=int, default=None,
                    help="train on the cases outside this cross-validation fold (the cache over all cases); the "
                         "presence threshold and box sizes are fitted on every fifth of those, and the fold's "
                         "held-out cases are not scored here (crossval scores the whole cascade on them)")
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    if a.fold is not None and a.install:
        ap.error("a fold's heat-map model is not installed (it is for cross-validation)")
    torch.set_num_threads(a.threads)
    meta, images, heat, known, targets, affines = heatmap_set(a.cache, a.data)
    if a.fold is None:
        train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train"]
        data_note = "OpenKBP training split"
    else:
        from .train_cnn3d import cases_outside_fold

        train_ids = cases_outside_fold(meta, a.fold)
        data_note = f"OpenKBP, every case outside cross-validation fold {a.fold} ({len(train_ids)})"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "data.json").write_text(json.dumps({"fold": a.fold, "cases": [meta["cases"][n] for n in train_ids]},
                                                indent=1))
    net = train(images, heat, known, train_ids, steps=a.steps, minutes=a.minutes, crop=a.crop, width=a.width,
                lr=a.lr, fg_weight=a.fg_weight, init=a.init, run_dir=a.out, cut_prob=a.cut_prob, targets=targets,
                affines=affines, organ_cut_share=a.organ_cut_share, fp_weight=a.fp_weight,
                log=lambda s: print(s, flush=True))
    path = a.out / "heatmap_openkbp.onnx"
    err = export(net, path, images.shape[1:])
    card = {"name": "heatmap_openkbp", "engine": "locate", "organs": meta["organs"], "grid": list(GRID),
            "input_grid": list(images.shape[1:]), "source_grid": list(images.shape[1:]),
            "spacing_mm": [list(s) for s in SPACING_MM],
            "windows_hu": [list(w) for w in WINDOWS_HU],
            "sigma2_mm2": SIGMA2_MM2, "tau": TAU, "box_margin_mm": 10.0, "onnx_parity_max_abs_diff": err,
            "date": _dt.date.today().isoformat(),
            "network": "cnn3d network (factorised residual 3D U-Net, width 16) with one output per organ, averaged "
                       "2x2x2 down to the 64^3 coarse grid; reads the scan on the cnn3d 128^3 grid (two CT windows)",
            "training": {"data": data_note, "fold": a.fold, "steps": net.steps_done, "crop": a.crop,
                         "width": a.width, "lr": a.lr, "batch": 1,
                         "loss": "L2, voxel weight 1 + fg_weight * target + fp_weight * prediction (not "
                                 "differentiated), uncontoured organs masked",
                         "fg_weight": a.fg_weight, "fp_weight": a.fp_weight, "cut_prob": a.cut_prob,
                         "organ_cut_share": a.organ_cut_share,
                         "init": str(a.init) if a.init else None}}
    if a.init is not None and a.init.suffix == ".onnx" and a.init.with_suffix(".json").exists():
        card["training"]["init_training"] = json.loads(a.init.with_suffix(".json").read_text()).get("training")
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    trained = {meta["cases"][n] for n in train_ids}
    fit_cases = [c for c in Dataset(a.data).cases if c.case_id in trained][::5] if a.fold is not None \
        else Dataset(a.data).split("train")[::5]
    card["tau"], card["tau_fit"] = fit_presence_threshold(path, a.data, fit_cases)
    card["tau_fit"]["cases"] = f"every fifth training case ({len(fit_cases)}), whole and cut"
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    print(f"presence threshold {card['tau']}: {card['tau_fit']}", flush=True)
    card["box_half_extent_mm"] = fit_box_half_extents(path, a.data, fit_cases, case_quantile=a.box_quantile)
    card["box_fit"] = {"cases": f"every fifth training case ({len(fit_cases)})", "voxel_quantile": 0.995,
                       "case_quantile": a.box_quantile}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    if a.fold is not None:
        return
    cases = Dataset(a.data).split("validation")
    if a.quick:
        cases = cases[::3]
    card["validation"] = compare(a.data, path, cases, sparse=not a.quick)
    card["validation"]["cases"] = len(cases)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    print(json.dumps(card["validation"], indent=1))
    if a.install:
        import shutil

        from ..modelcard import MODELS_DIR
        shutil.copy2(path, MODELS_DIR / path.name)
        shutil.copy2(path.with_suffix(".json"), MODELS_DIR / path.with_suffix(".json").name)


if __name__ == "__main__":
    main()
