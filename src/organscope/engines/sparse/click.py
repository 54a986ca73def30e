"""The sparse classifier compiled for a few points at a time (an interactive click): gather, network and softmax
in one numba call, no ONNX Runtime.

Why: for one descriptor ONNX Runtime spends ~60 us running the network's 44 nodes, most of it per-node overhead
around products of 128 numbers, and the Python around the call another ~20 us; one compiled call does the network
in ~35 us (the int8 first layer, 6561 x 128, as vpmaddwd dot products: ~23 us). Batches still go to ONNX Runtime,
which is faster per point from a few points on (see `ClickNet.max_points`).

`ClickNet.from_onnx` reads the weights of the architecture `training/export.py` writes with an int8 first layer
(`training/quantize.py`): MatMulInteger (uint8 codes x int8) -> scale, bias -> SiLU, then residual blocks of
[LayerNorm, Gemm, SiLU, LayerNorm, Gemm, SiLU] added to their input, a final LayerNorm and a Gemm to logits. Any
other graph (a float first layer, another block) gets None, and its clicks use ONNX Runtime as batches do; the
two paths agree to float32 rounding (tests/test_sparse_click.py compares them on the shipped model).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np

from ...onnx_graph import Graph, read_graph
from ...sampling.gather import CodeSampler

__all__ = ["ClickNet"]


@dataclass(frozen=True)
class ClickNet:
    """The network's weights laid out for the compiled single-point pass.

    w1t: (H, M) int8, the first layer's weights transposed (one row per hidden unit: a contiguous dot product);
    zp_colsum: (H,) int32, the codes' zero point times each row's sum (subtracted once instead of per sample);
    params: every float parameter in one float32 vector (one argument to the kernel instead of forty), in the
    order scale, bias, per block [ln1 weight, ln1 bias, gemm1 W (H, H), gemm1 b, ln2 weight, ln2 bias, gemm2 W,
    gemm2 b], final ln weight, final ln bias, head W (C, H), head b."""

    w1t: np.ndarray
    zp_colsum: np.ndarray
    params: np.ndarray
    n_blocks: int
    n_classes: int
    eps: float
    #: above this many points ONNX Runtime's batched products are faster (measured on 2 cores, gather included:
    #: 1 point 55 us here vs 87 us through ONNX Runtime, 2 points 99 vs 106, 3 points 138 vs 124, 4 209 vs 144)
    max_points: int = 2

    @property
    def hidden(self) -> int:
        return self.w1t.shape[0]

    @classmethod
    def from_onnx(cls, onnx_path: str | Path) -> "ClickNet | None":
        """The weights of `onnx_path` if its graph is the exported int8-first-layer residual MLP, else None."""
        try:
            graph = read_graph(onnx_path)
        except (OSError, ValueError):  # an unreadable file is reported by the ONNX Runtime session that loads it
            return None
        return _parse(graph)

    def probabilities(self, sampler: CodeSampler, centers_vox: np.ndarray, logit_bias: np.ndarray) -> np.ndarray:
        """(N, C) probabilities at integer voxels (int32, C-contiguous, inside the sampler's volume)."""
        out = np.empty((centers_vox.shape[0], self.n_classes), dtype=np.float32)
        _classify(sampler.codes, sampler.strides, centers_vox, sampler.lin, self.w1t, self.zp_colsum, self.params,
                  self.n_blocks, self.n_classes, np.float32(self.eps), logit_bias, out)
        return out


def _parse(graph: Graph) -> ClickNet | None:
    nodes, inits = graph.nodes, graph.initializers
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return None
    pos = 0

    def take(op, n_inputs=None):
        nonlocal pos
        if pos >= len(nodes) or nodes[pos].op_type != op:
            raise _NotThisGraph
        node = nodes[pos]
        pos += 1
        if n_inputs is not None and len(node.inputs) != n_inputs:
            raise _NotThisGraph
        return node

    def arr(node, i):
        if i >= len(node.inputs) or node.inputs[i] not in inits:
            raise _NotThisGraph
        return inits[node.inputs[i]]

    def silu(x_name):
        sig = take("Sigmoid")
        mul = take("Mul")
        if sig.inputs != [x_name] or sorted(mul.inputs) != sorted([x_name, sig.outputs[0]]):
            raise _NotThisGraph
        return mul.outputs[0]

    def layer_norm(x_name):
        ln = take("LayerNormalization", 3)
        if ln.inputs[0] != x_name or ln.attributes.get("axis", -1) != -1:
            raise _NotThisGraph
        return ln.outputs[0], arr(ln, 1), arr(ln, 2), float(ln.attributes.get("epsilon", 1e-5))

    def gemm(x_name):
        node = take("Gemm", 3)
        a = node.attributes
        if (node.inputs[0] != x_name or a.get("transB", 0) != 1 or a.get("transA", 0) != 0
                or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            raise _NotThisGraph
        return node.outputs[0], arr(node, 1), arr(node, 2)

    try:
        mm = take("MatMulInteger")
        w1, zp = arr(mm, 1), arr(mm, 2)
        if (mm.inputs[0] != graph.inputs[0] or w1.dtype != np.int8 or w1.ndim != 2 or zp.size != 1
                or (len(mm.inputs) > 3 and np.any(arr(mm, 3) != 0))):
            raise _NotThisGraph
        cast, mul, add = take("Cast"), take("Mul", 2), take("Add", 2)
        scale, bias = arr(mul, 1), arr(add, 1)
        if cast.inputs[0] != mm.outputs[0] or mul.inputs[0] != cast.outputs[0] or add.inputs[0] != mul.outputs[0]:
            raise _NotThisGraph
        hidden = w1.shape[1]
        x = silu(add.outputs[0])
        parts = [np.broadcast_to(scale, (hidden,)), np.broadcast_to(bias, (hidden,))]
        eps = set()
        n_blocks = 0
        while _is_block(nodes, pos):
            h, g1, b1, e1 = layer_norm(x)
            h, wa, ba = gemm(h)
            h = silu(h)
            h, g2, b2, e2 = layer_norm(h)
            h, wb, bb = gemm(h)
            h = silu(h)
            res = take("Add", 2)
            if sorted(res.inputs) != sorted([x, h]) or wa.shape != (hidden, hidden) or wb.shape != (hidden, hidden):
                raise _NotThisGraph
            parts += [g1, b1, wa, ba, g2, b2, wb, bb]
            eps |= {e1, e2}
            x = res.outputs[0]
            n_blocks += 1
        h, g, b, e = layer_norm(x)
        logits, wh, bh = gemm(h)
        eps.add(e)
        if pos != len(nodes) or logits != graph.outputs[0] or wh.ndim != 2 or wh.shape[1] != hidden or len(eps) != 1:
            raise _NotThisGraph
        parts += [g, b, wh, bh]
        params = np.concatenate([np.broadcast_to(np.asarray(p, dtype=np.float32), shape).ravel() for p, shape in
                                 zip(parts, _shapes(hidden, n_blocks, wh.shape[0]))])
    except (_NotThisGraph, ValueError):  # ValueError: a parameter of the wrong size
        return None
    zp_colsum = (int(zp.reshape(-1)[0]) * w1.astype(np.int32).sum(axis=0)).astype(np.int32)
    return ClickNet(np.ascontiguousarray(w1.T), zp_colsum, params, n_blocks, int(wh.shape[0]), eps.pop())


def _shapes(hidden: int, n_blocks: int, n_classes: int) -> list[tuple[int, ...]]:
    """The shape of each part of ClickNet.params, in order."""
    h = (hidden,)
    block = [h, h, (hidden, hidden), h, h, h, (hidden, hidden), h]
    return [h, h] + block * n_blocks + [h, h, (n_classes, hidden), (n_classes,)]


class _NotThisGraph(Exception):
    pass


def _is_block(nodes, pos) -> bool:
    """Whether a residual block starts at nodes[pos] (a block has 9 nodes; the final LayerNorm + Gemm has 2)."""
    ops = [n.op_type for n in nodes[pos:pos + 9]]
    return ops == ["LayerNormalization", "Gemm", "Sigmoid", "Mul", "LayerNormalization", "Gemm", "Sigmoid", "Mul",
                   "Add"]


# ---- the compiled pass ----------------------------------------------------------------------------------------
@nb.njit(nogil=True, cache=True, inline="always")
def _silu(v):
    return v / (np.float32(1.0) + np.exp(-v))


# sums of 128 float32 products may be reordered (reassoc) so that they run as vector instructions: the result
# differs from ONNX Runtime's (which also sums in its own order) by float32 rounding only
_SUMS = {"reassoc", "contract"}


@nb.njit(nogil=True, cache=True, fastmath=_SUMS)
def _layer_norm(x, g, b, eps, out):
    n = x.shape[0]
    mean = np.float32(0.0)
    for i in range(n):
        mean += x[i]
    mean /= n
    var = np.float32(0.0)
    for i in range(n):
        d = x[i] - mean
        var += d * d
    inv = np.float32(1.0) / np.sqrt(var / n + eps)
    for i in range(n):
        out[i] = (x[i] - mean) * inv * g[i] + b[i]


@nb.njit(nogil=True, cache=True, fastmath=_SUMS)
def _linear(x, w, b, out):
    """out = W x + b for W (n_out, n_in) stored row by row."""
    for j in range(out.shape[0]):
        s = b[j]
        for i in range(x.shape[0]):
            s += w[j, i] * x[i]
        out[j] = s


@nb.njit(nogil=True, cache=True)
def _first_layer(codes, w1t, zp_colsum, params, x):
    """x = SiLU(((codes - zero point) . W) * scale + bias): int32 dot products of int16 codes and int8 weights
    (compiled to vpmaddwd: 16 products per instruction)."""
    hid, m = w1t.shape
    for j in range(hid):
        x[j] = np.float32(_dot_i16_i8(codes, w1t[j]) - zp_colsum[j])
    for j in range(hid):
        x[j] = _silu(x[j] * params[j] + params[hid + j])


@nb.njit(nogil=True, cache=True)
def _dot_i16_i8(a, b):
    """int32 dot product. numba types the sum as int64; truncating it to int32 at the end (exact: |sum| <
    6561 * 255 * 128 < 2^31 for the 6561-sample descriptor) lets the compiler keep 32-bit lanes and use vpmaddwd."""
    s = 0
    for k in range(a.shape[0]):
        s += np.int32(a[k]) * np.int32(b[k])
    return np.int32(s)


@nb.njit(nogil=True, cache=True)
def _classify(codes_flat, strides, centers, lin, w1t, zp_colsum, params, n_blocks, n_classes,
              eps, logit_bias, out):
    hid, m = w1t.shape
    codes = np.empty(m, dtype=np.int16)   # uint8 codes (0..255) widened once: the products below are int16
    x = np.empty(hid, dtype=np.float32)
    t = np.empty(hid, dtype=np.float32)
    u = np.empty(hid, dtype=np.float32)
    z = np.empty(n_classes, dtype=np.float32)
    hh = hid * hid
    for p in range(centers.shape[0]):
        start = centers[p, 0] * strides[0] + centers[p, 1] * strides[1] + centers[p, 2] * strides[2]
        for k in range(m):
            codes[k] = codes_flat[start + lin[k]]
        _first_layer(codes, w1t, zp_colsum, params, x)
        o = 2 * hid
        for _ in range(n_blocks):
            _layer_norm(x, params[o:o + hid], params[o + hid:o + 2 * hid], eps, t)
            o += 2 * hid
            _linear(t, params[o:o + hh].reshape(hid, hid), params[o + hh:o + hh + hid], u)
            o += hh + hid
            for j in range(hid):
                u[j] = _silu(u[j])
            _layer_norm(u, params[o:o + hid], params[o + hid:o + 2 * hid], eps, t)
            o += 2 * hid
            _linear(t, params[o:o + hh].reshape(hid, hid), params[o + hh:o + hh + hid], u)
            o += hh + hid
            for j in range(hid):
                x[j] += _silu(u[j])
        _layer_norm(x, params[o:o + hid], params[o + hid:o + 2 * hid], eps, t)
        o += 2 * hid
        _linear(t, params[o:o + n_classes * hid].reshape(n_classes, hid),
                params[o + n_classes * hid:o + n_classes * hid + n_classes], z)
        top = np.float32(-np.inf)
        for c in range(n_classes):
            z[c] += logit_bias[c]
            top = max(top, z[c])
        total = np.float32(0.0)
        for c in range(n_classes):
            z[c] = np.exp(z[c] - top)
            total += z[c]
        for c in range(n_classes):
            out[p, c] = z[c] / total


# ---- the query's own steps, compiled (each numpy call on a one-point array costs ~1-3 us) -----------------------
@nb.njit(nogil=True, cache=True)
def nearest_voxels(world, inv_affine, shape, out) -> int:
    """out[i] = the voxel (rounded, int32) of inv_affine whose centre is nearest world point i; returns the index of
    the first point that is not finite or falls outside `shape`, or -1 when every point is inside."""
    for i in range(world.shape[0]):
        x, y, z = world[i, 0], world[i, 1], world[i, 2]
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
            return i
        for a in range(3):
            v = np.rint(inv_affine[a, 0] * x + inv_affine[a, 1] * y + inv_affine[a, 2] * z + inv_affine[a, 3])
            if not (0 <= v < shape[a]):
                return i
            out[i, a] = np.int32(v)
    return -1


@nb.njit(nogil=True, cache=True)
def top3(probs, order, top):
    """order[i] = the 3 classes of row i by decreasing probability (ties: the lower class first), top[i] = theirs."""
    n_classes = probs.shape[1]
    for i in range(probs.shape[0]):
        for r in range(3):
            best = -1
            for c in range(n_classes):
                taken = False
                for q in range(r):
                    if order[i, q] == c:
                        taken = True
                if not taken and (best < 0 or probs[i, c] > probs[i, best]):
                    best = c
            order[i, r] = best
            top[i, r] = probs[i, best]
