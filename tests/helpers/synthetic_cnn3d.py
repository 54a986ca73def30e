"""A SYNTHETIC cnn3d model with hand-written weights, so that the engine's outcome can be predicted exactly.

One 1x1x1 convolution over the two window channels (w1 = the wide window, HU -700..1300 -> 0..1):
    air   0
    body  20 * (w1 - 0.2)        > 0 iff HU > -300
    bone  40 * w1 - 14           > body iff w1 > 0.5, i.e. HU > 300
so the label map is "bone" exactly where the scan (resampled to the card's grid) is above 300 HU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ("background", "bone")
NETWORK_CLASSES = ("air", "body", "bone")


def write_model(folder: Path, grid=(32, 32, 32), name: str = "cnn3d_synthetic_test") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((3, 2, 1, 1, 1), dtype=np.float32)
    b = np.zeros(3, dtype=np.float32)
    w[1, 1], b[1] = 20.0, -4.0
    w[2, 1], b[2] = 40.0, -14.0
    node = helper.make_node("Conv", ["windows", "W", "B"], ["logits"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "synthetic_cnn3d",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, [1, 2, "d", "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, "d", "h", "w"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    card = {"name": name, "engine": "cnn3d", "format": "onnx", "classes": list(CLASSES),
            "network_classes": list(NETWORK_CLASSES), "grid": list(grid), "largest_component": False,
            "note": "SYNTHETIC test model: bone = HU > 300 on the network grid"}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path
