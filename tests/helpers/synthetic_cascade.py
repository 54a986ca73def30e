"""A SYNTHETIC cascade model with hand-written group networks, so that the engine's outcome can be predicted.

Each group network is one 1x1x1 convolution over the two window channels (w1 = the wide window, HU -700..1300
-> 0..1), as in helpers/synthetic_cnn3d:
    air              0
    body             20 * (w1 - 0.2)     > 0 iff HU > -300
    first organ      40 * w1 - 14        > body iff HU > 300 ("bone")
    other organs     -100                never
so inside a group's crop its first organ is exactly the voxels above 300 HU on the 128^3 grid (with a softmax
probability that grows with HU), and nothing is labelled outside the crops.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GROUPS = {"midline": ["brainstem", "spinal_cord"], "face": ["parotid_right", "parotid_left", "mandible"],
          "neck": ["larynx", "esophagus"]}


def _conv_model(n_organs: int, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 2 + n_organs
    w = np.zeros((n, 2, 1, 1, 1), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    w[1, 1], b[1] = 20.0, -4.0
    w[2, 1], b[2] = 40.0, -14.0
    b[3:] = -100.0
    node = helper.make_node("Conv", ["windows", "W", "B"], ["logits"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "synthetic_cascade_group",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, [1, 2, "d", "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n, "d", "h", "w"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_model(folder: Path, name: str = "cascade_synthetic_test", *, localizer: str = "sparse_grid",
                crop=(16, 16, 16), largest_component: bool = False, mirror_tta: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    groups = {}
    for g, organs in GROUPS.items():
        f = f"{name}_{g}.onnx"
        _conv_model(len(organs), folder / f)
        groups[g] = {"organs": organs, "file": f, "crop": list(crop)}
    card = {"name": name, "engine": "cascade", "format": "onnx", "grid": [128, 128, 128], "groups": groups,
            "localizer": localizer, "largest_component": largest_component, "margin_vox": 4, "mirror_tta": mirror_tta,
            "note": "SYNTHETIC test model: each group's first organ = HU > 300 inside the group's crop"}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))
    return path
