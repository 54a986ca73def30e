"""Weights read back from an ONNX export (training.onnx_weights): an exported network with batch norms folded
into its convolutions (constant folding and ONNX Runtime's offline optimisation, as the pipelines ship them)
loads into a fresh network that computes the same, also on an input size the check did not use; a graph that
does not fit the network is refused."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


def _net_with_statistics(seed: int, n_classes: int = 4):
    from organscope.training.cnn3d_net import Cnn3dNet

    torch.manual_seed(seed)
    net = Cnn3dNet(n_classes, width=8)
    with torch.no_grad():  # batch norms that are not the identity, so that folding them changes the weights
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("optimised", [False, True])
def test_folded_export_loads_back_and_computes_the_same(tmp_path, optimised):
    import onnxruntime as ort

    from organscope.training.cnn3d_net import Cnn3dNet
    from organscope.training.onnx_weights import load_onnx_weights

    src = _net_with_statistics(0)
    raw = tmp_path / "raw.onnx"
    x = torch.rand(1, 2, 32, 32, 32)
    torch.onnx.export(src, (x,), str(raw), input_names=["windows"], output_names=["logits"],
                      dynamic_axes={"windows": {2: "d", 3: "h", 4: "w"}}, opset_version=17,
                      do_constant_folding=True, dynamo=False)
    path = raw
    if optimised:  # what cnn3d_pipeline.export ships: ORT's basic level folds the remaining batch norms too
        path = tmp_path / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(path)
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    dst = Cnn3dNet(4, width=8)
    err = load_onnx_weights(dst, path)
    assert err < 1e-4
    y = torch.rand(1, 2, 48, 32, 64)
    with torch.no_grad():
        np.testing.assert_allclose(dst.eval()(y).numpy(), src(y).numpy(), atol=1e-4)
    # the folded batch norms are shifts: scale 1, mean 0
    shifts = [m for m in dst.modules() if isinstance(m, torch.nn.BatchNorm3d) and float(m.running_mean.abs().max()) == 0]
    assert shifts and all(float((m.weight.detach() - 1).abs().max()) == 0 for m in shifts)


def test_a_graph_of_another_network_is_refused(tmp_path):
    from organscope.training.cnn3d_net import Cnn3dNet
    from organscope.training.onnx_weights import load_onnx_weights

    src = _net_with_statistics(1)
    path = tmp_path / "m.onnx"
    torch.onnx.export(src, (torch.rand(1, 2, 32, 32, 32),), str(path), input_names=["windows"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    with pytest.raises(ValueError, match="weight"):
        load_onnx_weights(Cnn3dNet(4, width=16), path)


def test_scope_names_map_to_modules():
    from organscope.training.onnx_weights import module_path

    assert module_path("/stem/stem.2/body/body.2/body.2.2/Conv") == "stem.2.body.2.2"
    assert module_path("/up0/up/up.0/Conv") == "up0.up.0"
    assert module_path("/head/head.2/Conv") == "head.2"
