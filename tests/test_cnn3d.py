"""cnn3d engine: geometry through every orientation with a
SYNTHETIC hand-weighted model, bad input, and the training pieces (loss with partial labels, export parity)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import synthetic as syn
from helpers import synthetic_cnn3d as syn3
from organscope.errors import InputError, ModelError
from organscope.volume import Volume

GRID = (32, 32, 32)


@pytest.fixture(scope="module")
def cnn3d_synthetic(tmp_path_factory):
    pytest.importorskip("onnx")
    from organscope.engines.cnn3d import Cnn3dEngine

    path = syn3.write_model(tmp_path_factory.mktemp("cnn3d"), GRID)
    return Cnn3dEngine(path, threads=1)


# ---- the engine with the synthetic model ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RAS", "LPS", "PLI", "oblique"])
def test_engine_labels_the_bone_ball_in_every_orientation(cnn3d_synthetic, phantoms, name):
    vol = phantoms[name]
    seg = cnn3d_synthetic.segment(vol)
    assert seg.labels.shape == vol.shape
    np.testing.assert_array_equal(seg.labels.affine, vol.affine)
    assert seg.names == {1: "bone"}
    world = syn.voxel_world(vol.affine, vol.shape)
    d = np.linalg.norm(world - syn.BONE_SPHERE.center_mm, axis=-1) - syn.BONE_SPHERE.radius_mm
    margin = 1.5 * np.max(vol.spacing_mm * np.array(vol.shape) / np.array(GRID))  # ~one network voxel
    assert (seg.labels.array[d < -margin] == 1).all()
    assert (seg.labels.array[d > margin] == 0).all()


def test_engine_result_is_the_same_in_world_space_for_a_flipped_copy(cnn3d_synthetic, phantoms):
    ras, lps = phantoms["RAS"], phantoms["LPS"]
    a = cnn3d_synthetic.segment(ras).labels.array
    b = cnn3d_synthetic.segment(lps).labels.array  # LPS: RAS with axes 0 and 1 reversed, same voxel centres
    np.testing.assert_array_equal(a, b[::-1, ::-1, :])


def test_engine_rejects_nan(cnn3d_synthetic, phantoms):
    arr = phantoms["RAS"].array.astype(np.float32)
    arr[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        cnn3d_synthetic.segment(Volume(arr, phantoms["RAS"].affine))


def test_missing_and_corrupt_models_are_clear_errors(tmp_path):
    from organscope.engines.cnn3d import Cnn3dEngine

    with pytest.raises(ModelError, match="not found"):
        Cnn3dEngine(tmp_path / "nothing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    bad.with_suffix(".json").write_text('{"classes": ["background"], "grid": [32, 32, 32]}')
    with pytest.raises(ModelError, match="Could not load"):
        Cnn3dEngine(bad)
    bad.with_suffix(".json").write_text("{")
    with pytest.raises(ModelError, match="bad.json cannot be read as JSON"):
        Cnn3dEngine(bad)


# ---- training pieces (need the train extra) -----------------------------------------------------------------

def test_network_shapes_and_size():
    torch = pytest.importorskip("torch")
    from organscope.training.cnn3d_net import Cnn3dNet, count_parameters

    net = Cnn3dNet(9).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 2, 32, 48, 64))
    assert y.shape == (1, 9, 32, 48, 64)
    assert 100_000 < count_parameters(net) < 1_000_000


def test_partial_loss_never_teaches_body_on_an_uncontoured_organ():
    torch = pytest.importorskip("torch")
    from organscope.training.train_cnn3d import partial_loss

    target = torch.ones(1, 4, 4, 4, dtype=torch.long)  # all "body"
    target[0, :2] = 2  # an organ (the first, contoured) in half of it

    def loss(pred_class_in_body, contoured):
        logits = torch.full((1, 4, 4, 4, 4), -10.0)
        logits[:, 2][target == 2] = 10.0
        logits[:, pred_class_in_body][target == 1] = 10.0
        return float(partial_loss(logits, target, torch.tensor([contoured])))

    # predicting organ 2 (index 3) inside "body" costs nothing when organ 2 was not contoured ...
    assert loss(3, [True, False]) == pytest.approx(loss(1, [True, False]), abs=1e-3)
    # ... and is penalised when it was
    assert loss(3, [True, True]) > loss(1, [True, True]) + 0.5


def test_a_few_training_steps_then_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import json

    from organscope.training.cnn3d_data import PatchPlan
    from organscope.training.cnn3d_pipeline import export, load_run
    from organscope.training.train_cnn3d import Cnn3dSettings, train

    cache = tmp_path / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(-1000, 500, (3, 32, 32, 32)).astype(np.int16)
    targets = (images > 0).astype(np.uint8)
    targets[:, 10:14, 10:14, 10:14] = 2
    np.save(cache / "images.npy", images)
    np.save(cache / "targets.npy", targets)
    np.save(cache / "contoured.npy", np.ones((3, 1), bool))
    (cache / "cases.json").write_text(json.dumps({"cases": ["a", "b", "c"], "splits": ["train", "train", "validation"],
                                                  "organs": ["brainstem"], "grid": [32, 32, 32]}))
    run = tmp_path / "run"
    settings = Cnn3dSettings(steps=3, val_every=2, width=8, threads=1)
    train(cache, run, settings, PatchPlan(size=(16, 16, 16)))
    torch = pytest.importorskip("torch")
    last = torch.load(run / "last.pt", weights_only=False)["state"]
    assert last["step"] == 3 and len(last["history"]) == 2  # validated at step 2 and at the end
    net, meta, state = load_run(run)  # the best checkpoint by validation Dice
    assert state["step"] in (2, 3)
    err = export(net, tmp_path / "m.onnx")
    assert err < 2e-3
    # a new run goes on from the shipped (folded) ONNX model: batch norms frozen, weights as exported at step 0
    run2 = tmp_path / "run2"
    with pytest.raises(ValueError, match="freeze_batchnorm"):
        train(cache, run2, settings, PatchPlan(size=(16, 16, 16)), init=tmp_path / "m.onnx")
    import shutil
    shutil.rmtree(run2, ignore_errors=True)
    frozen = Cnn3dSettings(steps=2, val_every=2, width=8, threads=1, freeze_batchnorm=True)
    train(cache, run2, frozen, PatchPlan(size=(16, 16, 16)), init=tmp_path / "m.onnx")
    first = torch.load(run2 / "last.pt", weights_only=False)["state"]["history"][0]
    assert first["warm_start_from"].endswith("m.onnx") and first["onnx_parity"] < 1e-4
    # the folded batch norms stayed shifts (statistics untouched by training), and a resume keeps them frozen
    net2, meta2, _ = load_run(run2, "last.pt")
    assert meta2["settings"]["freeze_batchnorm"]
    shifts = [m for m in net2.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert all(float(m.running_mean.abs().max()) == 0 for m in shifts)
    train(cache, run2, Cnn3dSettings(steps=3, val_every=2, width=8, threads=1), PatchPlan(size=(16, 16, 16)))
    assert json.loads((run2 / "settings.json").read_text())["settings"]["freeze_batchnorm"]
    net3, _, _ = load_run(run2, "last.pt")
    assert all(float(m.running_mean.abs().max()) == 0 for m in net3.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_partial_loss_still_pushes_an_organ_whose_probability_is_tiny():
    """Regression: a clamped log had zero gradient below p = 1e-6, so organs pushed that low never recovered."""
    torch = pytest.importorskip("torch")
    from organscope.training.train_cnn3d import partial_loss

    target = torch.ones(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5, 2:5] = 2
    logits = torch.zeros(1, 3, 8, 8, 8)
    logits[:, 2] = -40.0  # p(organ) ~ 1e-17 everywhere
    logits.requires_grad_(True)
    partial_loss(logits, target, torch.tensor([[True]])).backward()
    per_voxel = float(logits.grad[0, 2][target[0] == 2].mean())
    assert per_voxel < -0.5 / target.numel()  # about -(1 - p) / N from the cross-entropy


def test_balanced_organ_patches_centre_on_each_organ_equally_often():
    """PatchPlan.balance_organs: an organ of the case is drawn uniformly, then one of its voxels, so a small organ
    is a patch centre as often as a large one; without it, centres follow the voxel counts (the rare organ's
    output class had collapsed in three cnn3d folds)."""
    pytest.importorskip("torch")
    from organscope.training.cnn3d_data import N_SPECIAL, PatchPlan, PatchSampler

    targets = np.zeros((1, 20, 20, 20), np.uint8)
    targets[0, 2:12, 2:12, 2:12] = N_SPECIAL        # a large organ: 1000 voxels
    targets[0, 15:17, 15:17, 15:17] = N_SPECIAL + 3  # a small one: 8 voxels
    images = np.zeros_like(targets, dtype=np.int16)

    def small_share(balance: bool) -> float:
        plan = PatchPlan(size=(4, 4, 4), organ_fraction=1.0, max_shift_vox=0.0, balance_organs=balance)
        sampler = PatchSampler(images, targets, plan, seed=1)
        centres = np.array([sampler._centre(0) for _ in range(2000)]).round().astype(int)
        labels = targets[0][tuple(centres.T)]
        assert (labels >= N_SPECIAL).all()  # every centre on an organ voxel
        return float(np.mean(labels == N_SPECIAL + 3))

    assert 0.45 < small_share(True) < 0.55
    assert small_share(False) < 0.03


def test_train_cnn3d_balance_organs_flag_reaches_the_patch_plan(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from organscope.training import train_cnn3d

    seen = []
    monkeypatch.setattr(train_cnn3d, "train", lambda cache, run, s, plan, **k: seen.append(plan.balance_organs))
    for extra, want in (([], False), (["--balance-organs"], True)):
        train_cnn3d.main(["--cache", str(tmp_path), "--run", str(tmp_path / "r"), *extra])
        assert seen[-1] is want


def test_a_resumed_cnn3d_run_keeps_the_patch_plan_it_started_with(tmp_path):
    """settings.json is rewritten on every start, so resuming with another balance_organs would train half a run
    one way and record the other: refused in one sentence, before anything is written."""
    pytest.importorskip("torch")
    import json

    from organscope.training.cnn3d_data import PatchPlan
    from organscope.training.train_cnn3d import Cnn3dSettings, train

    cache, run = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    run.mkdir()
    (cache / "cases.json").write_text(json.dumps({"cases": [], "organs": [], "splits": []}))
    for name, arr in (("images", np.zeros((0, 2, 2, 2), np.int16)), ("targets", np.zeros((0, 2, 2, 2), np.uint8)),
                      ("contoured", np.zeros((0, 0), bool))):
        np.save(cache / f"{name}.npy", arr)
    (run / "settings.json").write_text(json.dumps({"settings": {}, "plan": {"size": [48, 48, 64]}}))  # no key: off
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="started with balance_organs=False"):
        train(cache, run, Cnn3dSettings(), PatchPlan(balance_organs=True))
    assert json.loads((run / "settings.json").read_text())["plan"] == {"size": [48, 48, 64]}
