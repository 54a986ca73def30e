"""SYNTHETIC slice2d models with hand-written weights: for organ "mandible" (window -300..1500 HU) one 1x1
convolution gives logit = 40 * (x - 0.5), i.e. "organ" where the slice, resized to the network's size, is above
600 HU; for organ "brainstem" (window -70..170 HU) logit = 40 * (x - 0.5), i.e. above 50 HU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ORGANS = {"mandible": (-300.0, 1500.0), "brainstem": (-70.0, 170.0)}
THRESHOLD_HU = {"mandible": 600.0, "brainstem": 50.0}


def write_models(folder: Path, *, slice_range: str = "body") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from organscope.engines.slice2d.preprocess import INPUT_SIZE

    folder.mkdir(parents=True, exist_ok=True)
    card = {"name": "slice2d_synthetic_test", "engine": "slice2d", "input_size": list(INPUT_SIZE),
            "slice_range": slice_range, "largest_component": True, "organs": {},
            "note": "SYNTHETIC test models: organ = window value above 0.5"}
    for organ, window in ORGANS.items():
        node = helper.make_node("Conv", ["slices", "W", "B"], ["logits"], kernel_shape=[1, 1])
        graph = helper.make_graph(
            [node], f"synthetic_{organ}",
            [helper.make_tensor_value_info("slices", TensorProto.FLOAT, ["n", 1, *INPUT_SIZE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1, *INPUT_SIZE])],
            [numpy_helper.from_array(np.full((1, 1, 1, 1), 40.0, np.float32), "W"),
             numpy_helper.from_array(np.array([-20.0], np.float32), "B")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(folder / f"synthetic_{organ}.onnx"))
        card["organs"][organ] = {"file": f"synthetic_{organ}.onnx", "window_hu": list(window)}
    path = folder / "slice2d_synthetic_test.json"
    path.write_text(json.dumps(card))
    return path
