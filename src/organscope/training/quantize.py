"""Integer first layer: rewrite an exported float model (descriptors float32 -> logits) so that it takes the
descriptor's uint8 codes (value = (code - 128) / 32, exactly what the network was trained on) and computes the
6561 x 128 projection (~87 % of the work) as uint8 x int8 MatMulInteger with per-column weight scales.
The rest of the network stays float32."""
from __future__ import annotations

from pathlib import Path

import numpy as np

Q8_PER_UNIT = 32.0


def quantize_first_layer(float_path: Path, out_path: Path) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(float_path))
    g = model.graph
    inp = g.input[0]
    inits = {t.name: t for t in g.initializer}
    node = next(n for n in g.node if inp.name in n.input)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ValueError("unexpected Gemm attributes in the first layer")
        w = numpy_helper.to_array(inits[node.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.zeros(w.shape[1], np.float32)
    elif node.op_type == "MatMul":
        w, bias = numpy_helper.to_array(inits[node.input[1]]), None
    else:
        raise ValueError(f"first layer is {node.op_type}, expected Gemm or MatMul")
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    out = node.output[0]
    new_nodes = [
        helper.make_node("MatMulInteger", ["codes", "proj_wq", "codes_zero_point"], ["proj_i32"]),
        helper.make_node("Cast", ["proj_i32"], ["proj_f32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["proj_f32", "proj_scale"], [out if bias is None else "proj_scaled"]),
    ]
    new_inits = [numpy_helper.from_array(wq, "proj_wq"),
                 numpy_helper.from_array(np.array(128, np.uint8), "codes_zero_point"),
                 numpy_helper.from_array((scale / Q8_PER_UNIT).astype(np.float32), "proj_scale")]
    if bias is not None:
        new_nodes.append(helper.make_node("Add", ["proj_scaled", "proj_bias"], [out]))
        new_inits.append(numpy_helper.from_array(bias.astype(np.float32), "proj_bias"))
    idx = list(g.node).index(node)
    nodes = list(g.node[:idx]) + new_nodes + list(g.node[idx + 1:])
    used = {i for n in nodes for i in n.input}
    keep_inits = [t for t in g.initializer if t.name in used] + new_inits
    n_in = inp.type.tensor_type.shape.dim[1].dim_value
    graph = helper.make_graph(nodes, g.name, [helper.make_tensor_value_info("codes", TensorProto.UINT8, ["n", n_in])],
                              list(g.output), keep_inits)
    q = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="organscope")
    q.ir_version = model.ir_version
    onnx.checker.check_model(q)
    tmp = out_path.with_suffix(".tmp.onnx")
    onnx.save(q, str(tmp))
    tmp.replace(out_path)
    return {"first_layer": "uint8 x int8 MatMulInteger, per-column weight scales",
            "max_weight_rel_error": float((np.abs(wq * scale - w).max(axis=0) / (np.abs(w).max(axis=0) + 1e-12)).max())}
