"""int8 and fp16 variants of an exported cnn3d model, measured for speed and validation Dice beside float32.

- int8: ONNX Runtime static quantisation (QDQ, per-channel weights, activations calibrated on training volumes);
- fp16: weights and activations in float16 (onnxruntime.transformers.float16), inputs/outputs kept float32.

The paper tried dynamic and static quantisation: the former was 10x slower, the latter lost accuracy; this
script measures what they do here, and the card records it whichever variant ships.

    python -m organscope.training.cnn3d_variants --model work/cnn3d/export/cnn3d_openkbp.onnx \
        --cache work/cnn3d/cache --data ../shared/data/openkbp [--update-card]

--update-card writes the figures into the model's card (`variants`), beside the float32 model that ships.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engines.cnn3d.preprocess import WINDOWS_HU
from ..intensity import windows


class _Calibration:
    def __init__(self, images, ids):
        self.items = iter([{"windows": windows(np.asarray(images[n], dtype=np.float32), WINDOWS_HU)[None]} for n in ids])

    def get_next(self):
        return next(self.items, None)


def make_int8(model: Path, out: Path, images, ids) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(images, ids), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def make_fp16(model: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(m, str(out))


def network_seconds(model: Path, x: np.ndarray, threads: int = 2, repeats: int = 5) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"windows": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"windows": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    from .cnn3d_pipeline import validate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="exported float32 model with its .json card")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("work/cnn3d/variants"))
    ap.add_argument("--calibration-cases", type=int, default=8)
    ap.add_argument("--update-card", action="store_true", help="record the figures in the model's card")
    a = ap.parse_args(argv)
    from ..datasets import Dataset

    meta = json.loads((a.cache / "cases.json").read_text())
    images = np.load(a.cache / "images.npy", mmap_mode="r")
    train_ids = [n for n, s in enumerate(meta["splits"]) if s == "train"]
    calib = train_ids[:: max(1, len(train_ids) // a.calibration_cases)][: a.calibration_cases]
    a.out.mkdir(parents=True, exist_ok=True)
    card = json.loads(a.model.with_suffix(".json").read_text())
    variants = {"float32": a.out / "cnn3d_float32.onnx", "int8": a.out / "cnn3d_int8.onnx",
                "fp16": a.out / "cnn3d_fp16.onnx"}
    shutil.copy2(a.model, variants["float32"])
    make_int8(a.model, variants["int8"], images, calib)
    make_fp16(a.model, variants["fp16"])
    x = windows(np.asarray(images[train_ids[0]], dtype=np.float32), WINDOWS_HU)[None]
    val_cases = Dataset(a.data).split("validation")
    results = {}
    for name, path in variants.items():
        secs = network_seconds(path, x)
        with tempfile.TemporaryDirectory() as tmp:
            res = validate(path, card, a.data, val_cases, Path(tmp), offsets=card.get("logit_offsets"),
                           variants=(card.get("largest_component", False),), without_offsets=False)
        r = next(iter(res.values()))
        results[name] = {"network_seconds_128": round(secs, 3), "mean_dice": round(r["mean"]["dice"], 4),
                         "size_mb": round(path.stat().st_size / 1e6, 2),
                         "dice": {o: round(v["dice"], 4) for o, v in r["per_organ"].items()}}
        print(name, json.dumps(results[name]), flush=True)
    (a.out / "variants.json").write_text(json.dumps(results, indent=1))
    if a.update_card:
        f32, fastest = results["float32"], min(results, key=lambda k: results[k]["network_seconds_128"])
        card["variants"] = {
            "note": "network alone on one 128^3 volume, 2 threads, median of 5; validation mean Dice on "
                    f"{len(val_cases)} cases (python -m organscope.training.cnn3d_variants); float32 ships "
                    f"(float32 {f32['network_seconds_128']} s, fastest: {fastest})",
            **{k: {f: v[f] for f in ("network_seconds_128", "mean_dice", "size_mb")} for k, v in results.items()}}
        a.model.with_suffix(".json").write_text(json.dumps(card, indent=1))
        print(f"recorded in {a.model.with_suffix('.json')}")


if __name__ == "__main__":
    main()
