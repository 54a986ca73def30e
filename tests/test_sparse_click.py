"""The compiled few-point path of the sparse engine (engines/sparse/click.py), its ONNX reader (onnx_graph.py)
and the padded code sampler (sampling/gather.CodeSampler): each must give what ONNX Runtime / the bounds-checked
gather give."""
from pathlib import Path

import numpy as np
import pytest

from organscope.engines.sparse.click import ClickNet, nearest_voxels, top3
from organscope.sampling.gather import KIND_U8, CodeSampler, Sampler, gather_u8
from organscope.sampling.pattern import paper_pattern

MODELS = Path(__file__).resolve().parents[1] / "src" / "organscope" / "models"


def _random_residual_mlp(path: Path, rng, *, n_in: int, hidden: int, n_blocks: int, n_classes: int,
                         activation: str = "Sigmoid") -> Path:
    """An ONNX graph of the exported architecture (int8 first layer, SiLU, residual LayerNorm-Gemm blocks) with
    random weights, built node by node (no torch)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def silu(x, tag):
        nodes.append(helper.make_node(activation, [x], [f"{tag}_sig"]))
        nodes.append(helper.make_node("Mul", [x, f"{tag}_sig"], [f"{tag}_silu"]))
        return f"{tag}_silu"

    def ln(x, tag):
        nodes.append(helper.make_node("LayerNormalization", [x, init(f"{tag}_g", rng.normal(1, .1, hidden).astype(
            np.float32)), init(f"{tag}_b", rng.normal(0, .1, hidden).astype(np.float32))], [f"{tag}_ln"], axis=-1,
            epsilon=1e-5))
        return f"{tag}_ln"

    def gemm(x, n_out, tag):
        w = rng.normal(0, 1 / np.sqrt(hidden), (n_out, hidden)).astype(np.float32)
        nodes.append(helper.make_node("Gemm", [x, init(f"{tag}_w", w), init(f"{tag}_c", rng.normal(0, .1, n_out)
                                                                               .astype(np.float32))],
                                      [f"{tag}_out"], transB=1))
        return f"{tag}_out"

    w1 = rng.integers(-127, 128, (n_in, hidden)).astype(np.int8)
    nodes += [helper.make_node("MatMulInteger", ["codes", init("w1", w1), init("zp", np.array(128, np.uint8))],
                               ["acc"]),
              helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["acc_f", init("scale", np.full(hidden, 1 / (32 * 127 * np.sqrt(n_in)),
                                                                       np.float32))], ["scaled"]),
              helper.make_node("Add", ["scaled", init("bias", rng.normal(0, .1, hidden).astype(np.float32))],
                               ["proj"])]
    x = silu("proj", "stem")
    for b in range(n_blocks):
        h = silu(gemm(ln(x, f"b{b}a"), hidden, f"b{b}a"), f"b{b}a")
        h = silu(gemm(ln(h, f"b{b}b"), hidden, f"b{b}b"), f"b{b}b")
        nodes.append(helper.make_node("Add", [x, h], [f"b{b}_res"]))
        x = f"b{b}_res"
    gemm(ln(x, "final"), n_classes, "head")
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("codes", TensorProto.UINT8, [None, n_in])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, n_classes])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _onnx_probabilities(path: Path, codes: np.ndarray, logit_bias: np.ndarray) -> np.ndarray:
    from organscope.modelcard import open_session

    session = open_session(path, 1)
    z = session.run(None, {"codes": codes})[0] + logit_bias
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("hidden,n_blocks,n_classes", [(16, 0, 3), (32, 2, 5), (64, 3, 8)])
def test_compiled_pass_matches_onnx_runtime_on_random_networks(tmp_path, rng, hidden, n_blocks, n_classes):
    n_in = 57
    path = _random_residual_mlp(tmp_path / "m.onnx", rng, n_in=n_in, hidden=hidden, n_blocks=n_blocks,
                                n_classes=n_classes)
    net = ClickNet.from_onnx(path)
    assert net is not None and (net.hidden, net.n_blocks, net.n_classes) == (hidden, n_blocks, n_classes)
    vol = rng.integers(-1100, 1500, (9, 11, 7)).astype(np.int16)
    offsets = rng.integers(-6, 7, (n_in, 3)).astype(np.int32)   # many samples fall outside: the padding
    sampler = CodeSampler(vol, offsets)
    centers = np.ascontiguousarray(rng.integers(0, vol.shape, (5, 3)).astype(np.int32))
    bias = rng.normal(0, 1, n_classes).astype(np.float32)
    expected = _onnx_probabilities(path, gather_u8(vol, centers, offsets), bias)
    np.testing.assert_allclose(net.probabilities(sampler, centers, bias), expected, atol=2e-6, rtol=1e-4)


def test_other_graphs_get_no_compiled_pass(tmp_path, rng):
    relu = _random_residual_mlp(tmp_path / "relu.onnx", rng, n_in=20, hidden=8, n_blocks=1, n_classes=3,
                                activation="Relu")
    assert ClickNet.from_onnx(relu) is None
    (tmp_path / "junk.onnx").write_bytes(b"\x07not a model")
    assert ClickNet.from_onnx(tmp_path / "junk.onnx") is None
    assert ClickNet.from_onnx(tmp_path / "missing.onnx") is None


def test_the_shipped_model_clicks_like_its_batches(rng):
    """The shipped model's one-point answers (compiled) equal its batched answers (ONNX Runtime)."""
    import organscope.api as api
    from organscope.io import load_volume

    eng = api.engine("sparse", threads=1)
    assert eng._click_net() is not None, "the shipped sparse model should have the compiled click path"
    scan = eng.prepare(load_volume(Path(api.__file__).parent / "data" / "okbp_validation_222.nii.gz"))
    vox = np.ascontiguousarray(rng.integers(0, scan.canonical.shape, (80, 3)).astype(np.int32))
    batched = eng.classify_voxels(scan, vox)                       # 80 points: ONNX Runtime
    one = np.vstack([eng.classify_voxels(scan, v[None]) for v in vox])  # one at a time: compiled
    np.testing.assert_allclose(one, batched, atol=1e-5)
    assert (one.argmax(1) == batched.argmax(1)).all()


def test_code_sampler_reads_what_the_checked_gather_reads(rng):
    vol = rng.integers(-1200, 3000, (20, 18, 16)).astype(np.int16)
    offsets = paper_pattern().offsets_vox(np.diag([4.0, 4.0, 2.5, 1.0]))
    corners = np.array([[0, 0, 0], [19, 17, 15], [0, 17, 0], [19, 0, 15]], np.int32)
    centers = np.ascontiguousarray(np.vstack([corners, rng.integers(0, vol.shape, (70, 3))]).astype(np.int32))
    for v in (vol, vol[::-1, :, ::-1], np.asfortranarray(vol), vol.transpose(2, 0, 1)):
        c = np.ascontiguousarray(np.minimum(centers, np.array(v.shape) - 1).astype(np.int32))
        checked = Sampler(v, offsets, KIND_U8)(c, np.empty((len(c), len(offsets)), np.uint8))
        codes = CodeSampler(v, offsets)
        np.testing.assert_array_equal(codes(c, np.empty_like(checked)), checked)              # parallel kernel
        np.testing.assert_array_equal(codes(c[:3], np.empty_like(checked[:3])), checked[:3])  # serial kernel


def test_the_onnx_reader_reads_what_onnx_reads():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from organscope.onnx_graph import read_graph

    for path in sorted(MODELS.glob("*.onnx")):
        model, graph = onnx.load(str(path)), read_graph(path)
        expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        assert set(graph.initializers) == set(expected), path.name
        for name, array in expected.items():
            got = graph.initializers[name]
            assert got.dtype == array.dtype and got.shape == array.shape, (path.name, name)
            np.testing.assert_array_equal(got, array)
        assert [(n.op_type, n.inputs, n.outputs) for n in graph.nodes] == [
            (n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
        for node, ours in zip(model.graph.node, graph.nodes):
            for a in node.attribute:
                value = onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    assert ours.attributes[a.name] == value
                else:
                    np.testing.assert_allclose(np.asarray(ours.attributes[a.name], dtype=float),
                                               np.asarray(value, dtype=float), rtol=1e-7)
        assert graph.inputs == [i.name for i in model.graph.input if i.name not in expected]
        assert graph.outputs == [o.name for o in model.graph.output]


def test_nearest_voxels_and_top3(rng):
    inv = np.diag([0.5, 0.25, 1.0, 1.0])
    inv[:3, 3] = [1.0, -2.0, 0.0]
    world = np.array([[2.0, 12.0, 3.4], [0.0, 8.0, 0.6]])
    out = np.empty((2, 3), np.int32)
    assert nearest_voxels(world, inv, np.array([5, 5, 5]), out) == -1
    np.testing.assert_array_equal(out, [[2, 1, 3], [1, 0, 1]])
    assert nearest_voxels(np.array([[2.0, 12.0, 3.4], [0.0, 40.0, 0.0]]), inv, np.array([5, 5, 5]), out) == 1
    assert nearest_voxels(np.array([[np.nan, 0, 0]]), inv, np.array([5, 5, 5]), out) == 0
    probs = rng.random((50, 6)).astype(np.float32)
    probs[0] = [0.1, 0.3, 0.3, 0.2, 0.05, 0.05]   # a tie: the lower class first
    order, top = np.empty((50, 3), np.int64), np.empty((50, 3), np.float32)
    top3(probs, order, top)
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(top, np.take_along_axis(probs, expected, axis=1))
