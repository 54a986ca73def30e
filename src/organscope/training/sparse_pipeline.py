"""The whole training recipe of the sparse classifier, resumable step by step:

1. sample a fixed validation descriptor set (sparse_data.build),
2. train the residual MLP with checkpoints on fresh training points every epoch (EpochSampler, train_sparse.train),
3. export to ONNX (checked against ONNX Runtime),
4. calibrate on the validation cases: a class-frequency logit bias (training sampling over-represents organs,
   so alpha * log(body prior / training prior) is added to the logits) and the segmentation options
   (majority smoothing, connected components before refinement) are chosen by validation mean Dice,
5. write the model card with the validation figures, optionally install into the package.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..engines.sparse.engine import SegmentSettings, SparseEngine
from ..engines.sparse.model import SparseModel
from ..modelcard import MODELS_DIR
from ..sampling.pattern import PAPER_GRID_STEPS_MM, PAPER_PLANE_STEP_MM, paper_pattern
from ..sampling.points import body_mask
from .sparse_validation import validate

ALPHAS = (0.0, 0.5, 1.0)


def body_class_priors(cases, class_ids: dict[str, int]) -> np.ndarray:
    """Fraction of body voxels per class, each organ averaged over the cases that contour it."""
    fr = {c: [] for c in class_ids.values()}
    for case in cases:
        vol, lab = case.load_image().array, case.load_labels().array
        body = body_mask(vol)
        n = max(int(body.sum()), 1)
        for organ in case.organs:
            fr[class_ids[organ]].append(np.count_nonzero(lab[body] == class_ids[organ]) / n)
    pri = np.array([np.mean(fr[c]) if fr[c] else 0.0 for c in sorted(class_ids.values())])
    pri[0] = 1.0 - pri[1:].sum()
    return pri


def _checkpoint_epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=False)["epoch"]) + 1


def quantization_check(float_path: Path, int8_path: Path, cases) -> float:
    """Largest logit difference between the float and the int8 model on real descriptors of a few scans."""
    import onnxruntime as ort

    from ..sampling.gather import gather_u8

    f = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for case in cases:
        canon = case.load_image().to_canonical()[0]
        body = np.argwhere(body_mask(canon.array))[::50][:2000]
        codes = gather_u8(canon.array, body, paper_pattern().offsets_vox(canon.affine))
        lf = f.run(None, {"descriptors": (codes.astype(np.float32) - 128) / 32})[0]
        lq = q.run(None, {"codes": codes})[0]
        worst = max(worst, float(np.abs(lf - lq).max()))
    return round(worst, 5)


def base_card(name: str, classes: list[str], train_info: dict, run_settings: dict) -> dict:
    return {
        "name": name, "engine": "sparse", "format": "onnx", "classes": classes, "n_inputs": paper_pattern().size,
        "input": "HU/128 clipped to [-4, 4] at the pattern's offsets (rounded to voxels), 0 outside the scan",
        "output": "logits; probabilities = softmax(logits + logit_bias)",
        "pattern": {"name": paper_pattern().name, "plane_step_mm": PAPER_PLANE_STEP_MM,
                    "grid_steps_mm": list(PAPER_GRID_STEPS_MM)},
        "training": {"data": "OpenKBP (Babier et al. 2021), training split", "cases": train_info["cases"],
                     "fresh_points_every_epoch": train_info.get("fresh_points_every_epoch", False),
                     "n_points": train_info["n"], "sampling": train_info["plan"],
                     "settings": run_settings["settings"], "history": run_settings["history"]},
    }


def finalize(run_dir: Path, data_root: Path, out_dir: Path, name: str, *, checkpoint: str = "best.pt",
             install: bool = False, limit_val: int | None = None) -> dict:
    from .export import export_onnx, load_net
    from .quantize import quantize_first_layer

    ds = Dataset(data_root)
    classes = ["background"] + [ds.label_map.names[i] for i in sorted(ds.label_map.names) if i > 0]
    class_ids = {n: i for i, n in enumerate(classes)}
    # settings.json appears when training has finished; history.json after every epoch (to try a checkpoint early)
    run_settings = json.loads(((run_dir / "settings.json") if (run_dir / "settings.json").exists()
                               else (run_dir / "history.json")).read_text())
    s = run_settings["settings"]
    net = load_net(run_dir / checkpoint, run_settings["n_in"], len(classes), width=s["width"], n_blocks=s["n_blocks"])
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path, onnx_path = out_dir / f"{name}_float32.onnx", out_dir / f"{name}.onnx"
    err = export_onnx(net, float_path)
    print(f"exported {float_path} (max |torch - onnxruntime| = {err:.1e})", flush=True)
    quant = quantize_first_layer(float_path, onnx_path)
    quant["max_abs_logit_diff_vs_float32"] = quantization_check(float_path, onnx_path, ds.split("validation")[:3])
    print(f"int8 first layer: {quant}", flush=True)

    train_info = json.loads((run_dir / "data.json").read_text())
    fractions = [h["class_fraction"] for h in run_settings["history"] if "class_fraction" in h]
    train_prior = np.mean(fractions, axis=0)
    body_prior = body_class_priors(ds.split("train")[::4], class_ids)
    log_ratio = np.log(np.maximum(body_prior, 1e-6) / np.maximum(train_prior, 1e-6))
    card = base_card(name, classes, train_info, run_settings)
    card["onnx_parity_max_abs_diff"] = err
    card["training"]["checkpoint"] = {"file": checkpoint, "epoch": _checkpoint_epoch(run_dir / checkpoint)}
    card["quantization"] = quant
    val_cases = ds.split("validation")[:limit_val]

    def run(alpha: float, seg: SegmentSettings):
        c = dict(card, logit_bias=(alpha * log_ratio).round(5).tolist(), segmentation=asdict(seg))
        engine = SparseEngine(model=SparseModel(onnx_path, c), settings=seg)
        res = validate(engine, val_cases)
        print(json.dumps({"alpha": alpha, "segmentation": asdict(seg), **res.to_dict()}), flush=True)
        return res, c

    search = []
    best = None
    seg = SegmentSettings()
    for alpha in ALPHAS:
        res, c = run(alpha, seg)
        search.append({"alpha": alpha, "segmentation": asdict(seg), "mean_dice": res.mean_dice})
        if best is None or res.mean_dice > best[0].mean_dice:
            best = (res, c, alpha, seg)
    for variant in (replace(seg, majority=0), replace(seg, components_before_refinement=False)):
        res, c = run(best[2], variant)
        search.append({"alpha": best[2], "segmentation": asdict(variant), "mean_dice": res.mean_dice})
        if res.mean_dice > best[0].mean_dice:
            best = (res, c, best[2], variant)
    res, card, alpha, seg = best
    card.update({
        "date": _dt.date.today().isoformat(),
        "calibration": {"alpha": alpha, "train_prior": train_prior.round(6).tolist(),
                        "body_prior": body_prior.round(6).tolist(), "search": search},
        "validation": {"cases": [c.case_id for c in val_cases], "points_per_case": 1000,
                       "note": "Dice of segment() per contoured organ; point metrics on uniform random voxels, "
                               "background included", **res.to_dict()},
    })
    card_path = out_dir / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=1))
    print(f"model card {card_path}: mean Dice {res.mean_dice:.3f}, point accuracy {res.point_accuracy:.3f}, "
          f"macro-F1 {res.macro_f1:.3f}", flush=True)
    if install:
        shutil.copy2(onnx_path, MODELS_DIR / onnx_path.name)
        shutil.copy2(card_path, MODELS_DIR / card_path.name)
        print(f"installed into {MODELS_DIR}")
    return card


def run_pipeline(*, data: Path, work: Path = Path("work"), name: str | None = None, epochs: int = 10,
                 install: bool = False) -> int:
    """`organscope train --engine sparse`: validation set, training (resumes), export, calibration, card."""
    from .sparse_data import SHIPPED_PLAN, EpochSampler, SamplingPlan, build
    from .train_sparse import TrainSettings, train

    data, work = Path(data), Path(work)
    name = name or "sparse_openkbp"
    pattern = paper_pattern()
    val_dir, run_dir = work / "sparse_val", work / "runs" / name
    if not (val_dir / "info.json").exists():
        build(data, val_dir, pattern, SamplingPlan(n_body=600, n_band=300, n_balanced=100), split="validation",
              augment=False)
    n_classes = 1 + sum(1 for i in Dataset(data).label_map.names if i > 0)
    if not (run_dir / "settings.json").exists():
        train(EpochSampler(data, pattern, SHIPPED_PLAN), val_dir, run_dir,
              TrainSettings(epochs=epochs, weight_decay_l2=1e-4, threads=1), n_classes)
    # the last epoch: on OpenKBP it beat the lowest-validation-loss epoch on Dice (0.696 vs 0.683)
    finalize(run_dir, data, work, name, checkpoint="last.pt", install=install)
    return 0


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Export, calibrate and validate a trained sparse classifier.")
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="sparse_openkbp")
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--limit-val", type=int, default=None)
    ap.add_argument("--checkpoint", default="best.pt", help="best.pt (lowest validation loss) or last.pt")
    a = ap.parse_args(argv)
    finalize(a.run, a.data, a.out, a.name, checkpoint=a.checkpoint, install=a.install, limit_val=a.limit_val)


if __name__ == "__main__":
    main()
