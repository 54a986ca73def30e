"""From a cnn3d training run to a shipped model: ONNX export checked against ONNX Runtime, offline graph
optimisation (constant folding, BatchNorm folded into the convolutions, redundant nodes removed), then
per-class logit offsets fitted on training cases (`logit_offsets`: they undo the loss's over-segmentation),
validation with the engine itself (segment every validation scan, score like `organscope evaluate`), the
offsets and the largest-component step each kept only if they raise validation Dice, and the model card."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..datasets import Dataset
from ..modelcard import MODELS_DIR
from ..engines.cnn3d.preprocess import GRID, SPACING_MM, WINDOWS_HU
from .cnn3d_net import Cnn3dNet, count_gflops, count_parameters
from .cnn3d_data import N_SPECIAL
from .engine_validation import score_engine
from .logit_offsets import CANDIDATES, cached_samples, fit_offsets


def load_run(run_dir: Path, checkpoint: str = "best.pt") -> tuple[Cnn3dNet, dict, dict]:
    run = json.loads((run_dir / "settings.json").read_text())
    net = Cnn3dNet(2 + len(run["organs"]), width=run["settings"]["width"])
    ck = torch.load(run_dir / checkpoint, weights_only=False)
    net.load_state_dict(ck["net"])
    return net.eval(), run, ck["state"]


def export(net: Cnn3dNet, out_path: Path, *, atol: float = 1e-2) -> float:
    """Export with dynamic spatial axes (multiples of 16), check ORT against torch on a random volume, and save
    ORT's basic-level optimisation of the graph (portable across CPUs, unlike the 'all' level)."""
    import onnxruntime as ort

    x = torch.from_numpy(np.random.default_rng(0).random((1, 2, 64, 64, 80), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(net, (x,), str(raw), input_names=["windows"], output_names=["logits"],
                          dynamic_axes={"windows": {2: "d", 3: "h", 4: "w"}, "logits": {2: "d", 3: "h", 4: "w"}},
                          opset_version=17, do_constant_folding=True, dynamo=False)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        tmp_out = out_path.with_suffix(".tmp.onnx")
        opts.optimized_model_filepath = str(tmp_out)
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(str(tmp_out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(x).numpy()
    err = float(np.abs(sess.run(None, {"windows": x.numpy()})[0] - ref).max())
    if err > atol:
        tmp_out.unlink()
        raise RuntimeError(f"ONNX export differs from torch by {err:.2e} (> {atol:.0e}).")
    tmp_out.replace(out_path)
    return err


def validate(onnx_path: Path, card: dict, data_root: Path, cases, work: Path, offsets=None,
             variants=(False, True), threads: int | None = None, without_offsets: bool = True) -> dict:
    """Segment every case with the engine (with and without the largest-component step, and with and without
    the logit offsets when given; only with them if not `without_offsets`) and score each. Writes the card
    beside the model (the engine reads it)."""
    from ..engines.cnn3d import Cnn3dEngine

    choices = [None] if offsets is None else [[float(v) for v in offsets]]
    if offsets is not None and without_offsets:
        choices.insert(0, None)
    results = {}
    for off in choices:
        for lcc in variants:
            c = dict(card, largest_component=lcc, logit_offsets=off)
            card_path = onnx_path.with_suffix(".json")
            card_path.write_text(json.dumps(c, indent=1))
            key = f"lcc={int(lcc)} offsets={int(off is not None)}"
            r = score_engine(Cnn3dEngine(onnx_path, threads=threads), cases, data_root, work / key.replace(" ", "_"),
                             quiet=True)
            results[key] = {"largest_component": lcc, "logit_offsets": off, "mean": r["mean"],
                            "per_organ": r["per_organ"], "seconds_per_scan_median": r["median_seconds"]["total"]}
            print(f"{key}: mean Dice {r['mean']['dice']:.4f}", flush=True)
    return results


def finalize(run_dir: Path, data_root: Path, out_dir: Path, name: str = "cnn3d_openkbp", *,
             checkpoint: str = "best.pt", install: bool = False, cache: Path | None = None) -> dict:
    """`cache`: the training cache (`cnn3d_data.build_cache`), for fitting the logit offsets on every sixth
    training case; without it none are fitted."""
    net, run, state = load_run(run_dir, checkpoint)
    organs = run["organs"]
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    err = export(net, onnx_path)
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), max |torch - ORT| = {err:.1e}")
    card = {
        "name": name, "engine": "cnn3d", "format": "onnx",
        "classes": ["background", *organs],
        "network_classes": ["air", "body", *organs],
        "grid": list(GRID),
        "spacing_mm": [list(s) for s in SPACING_MM],
        "input": "(1, 2, 128, 128, 128) float32: the scan on the canonical RAS+ 128^3 grid covering its field of "
                 "view, HU through two windows (level, width) clipped to [0, 1]",
        "windows_hu": [list(w) for w in WINDOWS_HU],
        "output": "logits (1, n_network_classes, grid); argmax; air and body are background",
        "parameters": count_parameters(net),
        "gflops_128": round(count_gflops(net, (1, 2) + GRID), 2),
        "onnx_parity_max_abs_diff": err,
        "training": {"data": "OpenKBP (Babier et al. 2021), training split (170 cases)",
                     "settings": run["settings"], "patches": run["plan"], "checkpoint": checkpoint,
                     "steps": state["step"], "minutes": round(state["elapsed_s"] / 60, 1),
                     "history": state["history"]},
    }
    return validate_and_write_card(onnx_path, card, data_root, cache=cache, install=install)


def validate_and_write_card(onnx_path: Path, card: dict, data_root: Path, *, cache: Path | None = None,
                            install: bool = False, threads: int = 2) -> dict:
    """Fit the logit offsets (with a cache), validate every variant with the engine, keep the best, write the
    card beside the model and, with `install`, copy both into the package."""
    offsets = None
    if cache is not None:
        samples = cached_samples(onnx_path, cache, threads=threads)
        offsets = fit_offsets(samples, N_SPECIAL)
        card["logit_offsets_fit"] = {"cases": f"every sixth training case ({len(samples)})",
                                     "method": "one organ at a time, Dice on the network grid, two passes",
                                     "candidates": [float(CANDIDATES[0]), float(CANDIDATES[-1]), 0.25]}
        del samples
    val_cases = Dataset(data_root).split("validation")
    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        results = validate(onnx_path, card, data_root, val_cases, Path(tmp), offsets, threads=threads)
    best = max(results.values(), key=lambda r: r["mean"]["dice"])
    card["largest_component"] = best["largest_component"]
    card["logit_offsets"] = best["logit_offsets"]
    card["date"] = _dt.date.today().isoformat()
    card["validation"] = {"cases": [c.case_id for c in val_cases],
                          "note": "organscope segment --engine cnn3d, scored like organscope evaluate "
                                  "(Dice per contoured organ, NSD at 2 mm)",
                          **best, "variant_search": {k: v["mean"]["dice"] for k, v in results.items()}}
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=1))
    print(f"model card {card_path}: mean Dice {best['mean']['dice']:.4f} (validation took {time.time() - t:.0f} s)")
    if install:
        shutil.copy2(onnx_path, MODELS_DIR / onnx_path.name)
        shutil.copy2(card_path, MODELS_DIR / card_path.name)
        print(f"installed into {MODELS_DIR}")
    return card


def run_pipeline(*, data: Path, work: Path = Path("work"), name: str | None = None, hours: float = 1.55,
                 install: bool = False) -> int:
    """`organscope train --engine cnn3d`: cache, train (resumes), export, validate, card."""
    from .cnn3d_data import build_cache
    from .train_cnn3d import Cnn3dSettings, train

    data, work = Path(data), Path(work)
    name = name or "cnn3d_openkbp"
    cache, run_dir = work / "cnn3d_cache", work / "runs" / name
    if not (cache / "cases.json").exists():
        build_cache(data, cache)
    if not (run_dir / "best.pt").exists() or not _finished(run_dir):
        train(cache, run_dir, Cnn3dSettings(hours=hours))
    finalize(run_dir, data, work, name, install=install, cache=cache)
    return 0


def _finished(run_dir: Path) -> bool:
    ck = torch.load(run_dir / "last.pt", weights_only=False) if (run_dir / "last.pt").exists() else None
    if ck is None:
        return False
    s = ck["state"]
    settings = json.loads((run_dir / "settings.json").read_text())["settings"]
    return s["step"] >= settings["steps"] or s["elapsed_s"] >= settings["hours"] * 3600


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export, validate and write the card of a cnn3d training run, or "
                                             "refit the logit offsets and validation of an exported model.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="training run folder (settings.json, best.pt)")
    src.add_argument("--model", type=Path, help="an exported model with its card (.json beside it), e.g. the "
                                                "shipped one: copied to --out, offsets refitted, validated")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("work/cnn3d/export"))
    ap.add_argument("--name", default="cnn3d_openkbp")
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument("--cache", type=Path, help="training cache: fit per-class logit offsets on its training cases")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    if a.run is not None:
        finalize(a.run, a.data, a.out, a.name, checkpoint=a.checkpoint, install=a.install, cache=a.cache)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    onnx_path = a.out / f"{a.name}.onnx"
    if a.model.resolve() != onnx_path.resolve():
        shutil.copy2(a.model, onnx_path)
    card = json.loads(a.model.with_suffix(".json").read_text())
    card.pop("logit_offsets", None)  # validated afresh with and without them
    validate_and_write_card(onnx_path, card, a.data, cache=a.cache, install=a.install, threads=a.threads)


if __name__ == "__main__":
    main()
