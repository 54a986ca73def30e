"""Export a trained classifier to ONNX and check it against ONNX Runtime's CPU provider."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .sparse_model import ResidualMLP


def load_net(checkpoint: Path, n_in: int, n_classes: int, *, width: int, n_blocks: int) -> ResidualMLP:
    net = ResidualMLP(n_in, n_classes, width=width, n_blocks=n_blocks)
    net.load_state_dict(torch.load(checkpoint, weights_only=False)["net"])
    return net.eval()


def export_onnx(net: ResidualMLP, out_path: Path, *, atol: float = 1e-3) -> float:
    """Write descriptors (float32 N x M) -> logits (float32 N x C); return the max abs difference between
    torch and ONNX Runtime on random descriptors (raises if above `atol`). The calibration bias and the
    softmax live in the model card and the engine, so calibrating needs no re-export."""
    import onnxruntime as ort

    model = net.eval()
    n_in = net.proj.in_features
    dummy = torch.zeros(4, n_in)
    tmp = out_path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["descriptors"], output_names=["logits"],
                      dynamic_axes={"descriptors": {0: "n"}, "logits": {0: "n"}}, opset_version=17,
                      dynamo=False)
    x = (np.random.default_rng(0).integers(-128, 128, (256, n_in)) / 32.0).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"descriptors": x})[0]
    err = float(np.abs(ref - got).max())
    if err > atol:
        tmp.unlink()
        raise RuntimeError(f"ONNX export differs from torch by {err:.2e} (> {atol:.0e}).")
    tmp.replace(out_path)
    return err
