"""Weights of a shipped ONNX model back into its torch network, so that training can go on from a model that
ships when its training checkpoint is gone (a new machine holds only the package).

At export, every batch norm that follows a convolution was folded into it (weight scaled, a bias added): the
torch network gets the folded convolution weights, and each such batch norm becomes a shift by the folded bias
(scale 1, mean 0, variance 1 - eps). In eval mode, and in training with batch-norm statistics frozen (as the
heat-map trainer keeps them when it starts from other weights), the network then computes what the ONNX model
does; `load_onnx_weights` checks that on a random input and returns the largest difference. The sparse
classifier's residual MLP (`load_sparse_onnx`) has no convolutions: its weights go back by name.

Convolutions are matched to modules by the scope names torch's exporter gives the nodes ('/stem/stem.2/body/body.0/
Conv' is module stem.2.body.0), or, in a graph without them, in the order the network runs them; each is checked
for its shape. Unfolded batch norms (after a transposed convolution, in a graph not optimised offline) likewise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

_CONV = (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d)
_BN = (nn.BatchNorm3d, nn.BatchNorm2d)


def _call_order(net: nn.Module, shape) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(module, input, output) of every convolution and batch norm, in the order a forward pass runs them."""
    calls = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0], out)))
             for m in net.modules() if isinstance(m, _CONV + _BN)]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return calls


def freeze_batchnorm(net: nn.Module) -> None:
    """Batch norms to eval mode (call after `net.train()`): their statistics stay as loaded, which a network
    from `load_onnx_weights` needs (its folded batch norms are fixed shifts), and which keeps a pretrained
    network's statistics when batches are too small to replace them."""
    for m in net.modules():
        if isinstance(m, _BN):
            m.eval()


def module_path(node_name: str) -> str:
    """The module a node of torch's exporter came from: '/stem/stem.2/body/body.2/body.2.2/Conv' ->
    'stem.2.body.2.2' (a scope is an attribute of the one above it, or 'above.index' for a container's child)."""
    path, prev = [], None
    for seg in node_name.strip("/").split("/")[:-1]:
        if prev is not None and seg.startswith(prev + "."):
            path.append(seg[len(prev) + 1:])
        else:
            path.append(seg)
        prev = seg
    return ".".join(path)


def _match(nodes, calls, modules: dict) -> list:
    """The torch call of each graph node: by scope name where every node has one, else by order."""
    by_mod = {id(c[0]): c for c in calls}
    named = [modules.get(module_path(n.name)) for n in nodes]
    if nodes and all(m is not None and id(m) in by_mod for m in named):
        return [by_mod[id(m)] for m in named]
    return list(calls)


def load_onnx_weights(net: nn.Module, onnx_path: Path, input_shape=(1, 2, 32, 32, 32)) -> float:
    """Put the weights of `onnx_path` (an export of a network of the same architecture) into `net`; returns the
    largest absolute difference between the two on a random input (of the graph's input shape where it is
    fixed, else `input_shape`). Raises ValueError where the graph does not fit the network."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    calls = _call_order(net, input_shape)
    t_convs = [(m, i, o) for m, i, o in calls if isinstance(m, _CONV)]
    t_bns = [(m, i, o) for m, i, o in calls if isinstance(m, _BN)]
    if len(convs) != len(t_convs):
        raise ValueError(f"{onnx_path.name} has {len(convs)} convolutions, the network {len(t_convs)}.")
    folded = set()
    modules = dict(net.named_modules())
    with torch.no_grad():
        for node, (mod, _, out) in zip(convs, _match(convs, t_convs, modules)):
            w = init[node.input[1]]
            if tuple(w.shape) != tuple(mod.weight.shape):
                raise ValueError(f"{node.name}: weight {w.shape} in the graph, {tuple(mod.weight.shape)} in the network.")
            mod.weight.copy_(torch.from_numpy(w.copy()))
            b = init[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            if mod.bias is not None:
                mod.bias.copy_(torch.from_numpy(b.copy()) if b is not None else torch.zeros_like(mod.bias))
                continue
            if b is None:
                continue
            follower = next((bm for bm, bi, _ in t_bns if bi is out), None)
            if follower is None:
                raise ValueError(f"{node.name} has a bias that no batch norm of the network can take.")
            follower.weight.fill_(1.0)
            follower.bias.copy_(torch.from_numpy(b.copy()))
            follower.running_mean.zero_()
            follower.running_var.fill_(1.0 - follower.eps)
            folded.add(follower)
        rest = [m for m, _, _ in t_bns if m not in folded]
        if len(rest) != len(bns):
            raise ValueError(f"{onnx_path.name} has {len(bns)} batch norms left, the network {len(rest)} unfolded.")
        rest_calls = [c for c in t_bns if c[0] not in folded]
        for node, (mod, _, _) in zip(bns, _match(bns, rest_calls, modules)):
            for t, name in zip((mod.weight, mod.bias, mod.running_mean, mod.running_var), node.input[1:5]):
                t.copy_(torch.from_numpy(init[name].copy()))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = torch.rand(tuple(dims) if dims and all(d > 0 for d in dims) else input_shape)
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(ref - got).max())


def load_sparse_onnx(net: nn.Module, onnx_path: Path) -> float:
    """Set `net`'s weights from an exported sparse model (float, or with the uint8 x int8 first layer of
    quantize.py: that layer's weights dequantised) and return the largest logit difference between the two on
    random descriptors (the quantisation error for an integer first layer)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from .sparse_model import Q8_PER_UNIT

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # the exporter shares equal constant tensors (e.g. untrained layer norms' ones and zeros) through Identity nodes
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])
    state = net.state_dict()
    new = {}
    for name in state:
        if name in inits:
            new[name] = torch.from_numpy(np.array(inits[name], dtype=np.float32))
    if "proj_wq" in inits:  # (in, out) int8 with per-column scales (already divided by Q8_PER_UNIT)
        w = inits["proj_wq"].astype(np.float32) * inits["proj_scale"][None, :] * Q8_PER_UNIT
        new["proj.weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
        new["proj.bias"] = torch.from_numpy(inits["proj_bias"].astype(np.float32))
    missing = sorted(set(state) - set(new))
    if missing:
        raise ValueError(f"{onnx_path.name} has no weights for {missing}")
    net.load_state_dict(new)
    codes = np.random.default_rng(0).integers(64, 192, (64, net.proj.in_features)).astype(np.uint8)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = codes if sess.get_inputs()[0].type == "tensor(uint8)" else ((codes.astype(np.float32) - 128) / Q8_PER_UNIT)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    net.eval()
    with torch.no_grad():
        got = net(torch.from_numpy((codes.astype(np.float32) - 128) / Q8_PER_UNIT)).numpy()
    net.train()
    return float(np.abs(ref - got).max())
