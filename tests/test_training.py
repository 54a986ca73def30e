"""Training smoke test on a synthetic phantom dataset (needs the train extra): build a descriptor set with
partial labels, train one short epoch, export to ONNX with the parity check, and load it as a SparseModel."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from organscope.sampling import paper_pattern  # noqa: E402
from organscope.training.sparse_data import SamplingPlan, allowed_bits, build  # noqa: E402

SCAN = Path(__file__).resolve().parents[1] / "src" / "organscope" / "data" / "okbp_validation_222.nii.gz"


def _phantom_dataset(root):
    """Two synthetic 'patients': a water body with two spheres (labels 1 and 2); case b does not contour 2."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    g = np.indices((40, 40, 30)).astype(float)
    aff = np.diag([-4.0, -4.0, 3.0, 1.0])  # LPS-like flips, anisotropic
    cases = []
    for name, organs in (("syn_a", ["one", "two"]), ("syn_b", ["one"])):
        body = ((g[0] - 20) ** 2 + (g[1] - 20) ** 2) < 17 ** 2
        s1 = ((g[0] - 14) ** 2 + (g[1] - 20) ** 2 + (g[2] - 15) ** 2) < 25
        s2 = ((g[0] - 26) ** 2 + (g[1] - 20) ** 2 + (g[2] - 15) ** 2) < 25
        img = np.where(body, 20, -1000) + np.where(s1, 300, 0) + np.where(s2, -80, 0)
        lab = np.where(s1, 1, 0) + np.where(s2 & ("two" in organs), 2, 0)
        nib.save(nib.Nifti1Image(img.astype(np.int16), aff), root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), aff), root / "labels" / f"{name}.nii.gz")
        cases.append({"case": name, "split": "train", "organs": organs})
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}, "cases": cases}))


def test_allowed_bits_partial_labels():
    bits = allowed_bits(np.array([0, 1, 0]), uncontoured_ids=[2])
    assert bits.tolist() == [0b101, 0b010, 0b101]


def test_build_train_export_roundtrip(tmp_path):
    from organscope.engines.sparse.model import SparseModel
    from organscope.training.export import export_onnx
    from organscope.training.sparse_model import ResidualMLP, partial_label_loss
    from organscope.training.train_sparse import TrainSettings, train

    _phantom_dataset(tmp_path / "data")
    plan = SamplingPlan(n_body=120, n_band=60, n_balanced=20)
    d = build(tmp_path / "data", tmp_path / "set", paper_pattern(), plan, split="train")
    y = np.load(d / "y.npy")
    bits = np.load(d / "allowed.npy")
    X = np.load(d / "X.npy", mmap_mode="r")[: len(y)]
    assert (np.asarray(X) != 0).mean() > 0.3  # descriptors really written
    assert set(np.unique(y)) <= {0, 1, 2} and (y == 1).any()
    # in case b, organ 2 is uncontoured: its background points allow class 2 too
    case = np.load(d / "case.npy")
    assert np.all(bits[(case == 1) & (y == 0)] == 0b101)
    assert np.all(bits[(case == 0) & (y == 0)] == 0b001)
    # the loss of a point allowing {0, 2} equals -log(p0 + p2)
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    p = torch.softmax(logits, 1)[0]
    assert torch.isclose(partial_label_loss(logits, torch.tensor([0b101])), -torch.log(p[0] + p[2]))

    ckpt = train(d, d, tmp_path / "run", TrainSettings(epochs=1, batch_size=64, width=16, n_blocks=1), 3)
    net = ResidualMLP(6561, 3, width=16, n_blocks=1)
    net.load_state_dict(torch.load(ckpt, weights_only=False)["net"])
    err = export_onnx(net, tmp_path / "m.onnx")
    assert err < 1e-3
    card = {"engine": "sparse", "classes": ["background", "one", "two"], "n_inputs": 6561,
            "pattern": {"plane_step_mm": 4.0, "grid_steps_mm": [2, 3, 5, 12, 28, 64]}}
    model = SparseModel(tmp_path / "m.onnx", card)
    probs = model.predict(np.zeros((5, 6561), np.float32))
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_epoch_sampler_draws_fresh_points_with_partial_labels(tmp_path):
    from organscope.training.sparse_data import EpochSampler

    _phantom_dataset(tmp_path / "data")
    sampler = EpochSampler(tmp_path / "data", paper_pattern(), SamplingPlan(n_body=100, n_band=50, n_balanced=30))
    assert sampler.size == 2 * 180
    X = np.zeros((sampler.size, 6561), np.int8)
    y1, bits1, case1 = sampler.fill(X, np.random.default_rng(1))
    first = X.copy()
    y2, _, _ = sampler.fill(X, np.random.default_rng(2))
    assert len(y1) == len(y2) == sampler.size
    assert not np.array_equal(first, X)                      # fresh points each epoch
    assert (first != 0).mean() > 0.3                          # written in place
    assert np.all(bits1[(case1 == 1) & (y1 == 0)] == 0b101)   # case b: background may be the uncontoured organ 2
    assert not np.any(y1[case1 == 1] == 2)
    # balanced part: both contoured organs of case a are sampled
    assert (y1[case1 == 0] == 1).sum() >= 15 and (y1[case1 == 0] == 2).sum() >= 15


def test_a_cut_field_of_view_reads_zero_outside_the_square_and_only_there(tmp_path):
    """cut_field_of_view: for points inside a random in-plane square, every sample outside the square reads 0 (the
    outside-the-scan value) and every sample inside keeps its value; points outside the square are untouched."""
    from organscope.training.sparse_data import EpochSampler, cut_field_of_view

    _phantom_dataset(tmp_path / "data")
    pattern = paper_pattern()
    sampler = EpochSampler(tmp_path / "data", pattern, SamplingPlan(n_body=100, n_band=50, n_balanced=30))
    ix = sampler.index[0]
    from organscope.sampling.gather import gather_q8

    rng = np.random.default_rng(3)
    centers = np.stack(np.unravel_index(ix.body_idx[rng.integers(0, len(ix.body_idx), 200)], ix.volume.shape),
                       axis=1).astype(np.int32)
    offs = pattern.offsets_vox(ix.affine)
    codes = gather_q8(ix.volume, centers, offs)
    before = codes.copy()
    plan = SamplingPlan(cut_mm=(60.0, 60.0), cut_shift_mm=0.0)  # 15 voxels of 4 mm around the body's centre
    cut_field_of_view(codes, centers, offs, ix, np.random.default_rng(0), plan)
    lo = np.floor(ix.body_centre - 7.5).astype(int)
    hi = np.ceil(ix.body_centre + 7.5).astype(int)
    inside = np.all((centers[:, :2] >= lo) & (centers[:, :2] <= hi), axis=1)
    assert inside.any() and (~inside).any()
    assert np.array_equal(codes[~inside], before[~inside])
    pos = centers[inside, None, :2] + offs[None, :, :2]
    out = np.any((pos < lo) | (pos > hi), axis=2)
    assert out.any() and (~out).any()
    assert (codes[inside][out] == 0).all()
    assert np.array_equal(codes[inside][~out], before[inside][~out])
    assert (before[inside][out] != 0).any()  # the cut really changed something


def test_training_can_start_from_an_exported_model(tmp_path):
    """load_sparse_onnx puts an exported model's weights (float, or the shipped integer first layer, dequantised)
    into the torch network: it then computes the same logits."""
    from organscope.training.export import export_onnx
    from organscope.training.quantize import quantize_first_layer
    from organscope.training.sparse_model import ResidualMLP
    from organscope.training.onnx_weights import load_sparse_onnx

    torch.manual_seed(0)
    src = ResidualMLP(6561, 3, width=16, n_blocks=1).eval()
    export_onnx(src, tmp_path / "f.onnx")
    quantize_first_layer(tmp_path / "f.onnx", tmp_path / "q.onnx")
    for name in ("f.onnx", "q.onnx"):
        net = ResidualMLP(6561, 3, width=16, n_blocks=1)
        assert not torch.equal(net.proj.weight, src.proj.weight)
        diff = load_sparse_onnx(net, tmp_path / name)
        assert diff < (1e-4 if name == "f.onnx" else 0.1)
        torch.testing.assert_close(net.head.weight, src.head.weight)
    torch.testing.assert_close(net.proj.weight, src.proj.weight, atol=float(src.proj.weight.detach().abs().max()) / 254,
                               rtol=0)


def test_folds_are_balanced_disjoint_and_the_same_every_time(tmp_path):
    from organscope.training.folds import assign_folds, fold_cases
    from organscope.training.sparse_data import EpochSampler

    ids = [f"case_{i:03d}" for i in range(203)]
    folds = assign_folds(ids)
    assert folds == assign_folds(list(reversed(ids)))  # depends on the ids, not their order
    sizes = np.bincount(list(folds.values()))
    assert sizes.tolist() == [41, 41, 41, 40, 40]
    assert assign_folds(ids, seed=1) != folds
    with pytest.raises(ValueError):
        assign_folds(ids[:3], k=5)
    _phantom_dataset(tmp_path / "data")
    train_ids, held = fold_cases(tmp_path / "data", 0, k=2)
    assert sorted(train_ids + held) == ["syn_a", "syn_b"] and len(held) == 1
    sampler = EpochSampler(tmp_path / "data", paper_pattern(), SamplingPlan(n_body=50, n_band=20, n_balanced=10),
                           cases=held)
    assert [c["case"] for c in sampler.cases] == held
    with pytest.raises(ValueError, match="not in"):
        EpochSampler(tmp_path / "data", paper_pattern(), SamplingPlan(), cases=["nobody"])


def test_train_sparse_all_cases_trains_on_every_split_and_excludes_fold(tmp_path, monkeypatch):
    """The model shipped after cross-validation trains on every case whatever its split (--all-cases); with
    --fold, or without a dataset to draw from, the command refuses in one line (exit 2)."""
    import json

    from organscope.training import train_sparse

    _phantom_dataset(tmp_path / "data")
    meta_path = tmp_path / "data" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["cases"][1]["split"] = "validation"
    meta_path.write_text(json.dumps(meta))
    seen = {}
    monkeypatch.setattr(train_sparse, "train", lambda source, *a, **k: seen.setdefault("cases", source.cases))
    train_sparse.main(["--resample-from", str(tmp_path / "data"), "--all-cases", "--val", "v", "--run", "r"])
    assert sorted(c["case"] for c in seen["cases"]) == ["syn_a", "syn_b"]
    seen.clear()
    train_sparse.main(["--resample-from", str(tmp_path / "data"), "--val", "v", "--run", "r"])
    assert [c["case"] for c in seen["cases"]] == ["syn_a"]  # the training split only
    for extra in (["--resample-from", str(tmp_path / "data"), "--all-cases", "--fold", "0"], ["--all-cases"]):
        with pytest.raises(SystemExit) as exc:
            train_sparse.main(["--val", "v", "--run", "r", *extra])
        assert exc.value.code == 2


def test_ship_sparse_refuses_a_run_trained_with_another_recipe_than_the_folds(tmp_path):
    """The shipped card carries the folds' out-of-fold figure, so the run must have the folds' training settings
    and sampling plan: the core count is ignored, a plan key the fold cards predate counts as off, anything else
    that differs is named and ship_sparse refuses before exporting."""
    from organscope.training import ship_sparse

    settings = {"epochs": 10, "lr": 3e-4, "width": 128, "threads": 1}
    plan = {"n_body": 2700, "cut_fraction": 0.3}
    cv = tmp_path / "cv"
    for k in (0, 1):
        (cv / f"fold{k}").mkdir(parents=True)
        (cv / f"fold{k}" / f"sparse_fold{k}.json").write_text(json.dumps({"training": {"settings": settings,
                                                                                      "plan": plan}}))
    _phantom_dataset(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()

    def write_run(settings_, plan_):
        (run / "settings.json").write_text(json.dumps({"settings": settings_}))
        (run / "data.json").write_text(json.dumps({"cases": ["syn_a", "syn_b"], "plan": plan_}))

    write_run({**settings, "threads": 2}, {**plan, "flip_fraction": 0.0})
    assert ship_sparse.recipe_differences(run, cv) == []
    # the elastic field's size only matters with elastic chunks: off, a run that records it is the same recipe
    write_run(settings, {**plan, "elastic_fraction": 0.0, "elastic_mm": 4.0, "elastic_grid_mm": 32.0})
    assert ship_sparse.recipe_differences(run, cv) == []
    write_run(settings, {**plan, "elastic_fraction": 0.5, "elastic_mm": 4.0})
    assert ship_sparse.recipe_differences(run, cv) == [
        f"plan.{w}: run {a}, fold{k} None" for k in (0, 1) for w, a in (("elastic_fraction", 0.5), ("elastic_mm", 4.0))]
    write_run({**settings, "epochs": 20}, {**plan, "flip_fraction": 0.5})
    diffs = ship_sparse.recipe_differences(run, cv)
    assert diffs == [f"{w}: run {a}, fold{k} {b}" for k in (0, 1)
                     for w, a, b in (("settings.epochs", 20, 10), ("plan.flip_fraction", 0.5, None))]
    with pytest.raises(SystemExit, match="not trained with the recipe of the folds"):
        ship_sparse.main(["--run", str(run), "--cv", str(cv), "--data", str(tmp_path / "data"),
                          "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert ship_sparse.recipe_differences(run, tmp_path / "empty")[0].endswith("holds no fold model card "
                                                                               "(fold*/sparse_fold*.json)")


def test_out_of_fold_summary_means_organs_over_the_cases_that_contour_them():
    from organscope.training.crossval import summary

    scores = {"a": {"organs": {"x": {"dice": 0.8}, "y": {"dice": 0.4}}},
              "b": {"organs": {"x": {"dice": 0.6}}},
              "c": {"organs": {"x": {"dice": 1.0}, "y": {"dice": None}}}}
    s = summary(scores)
    assert s["dice"] == {"x": 0.8, "y": 0.4} and s["mean_dice"] == 0.6 and s["cases"] == 3
    lo, hi = s["mean_dice_95ci"]
    assert lo <= s["mean_dice"] <= hi and lo < hi


def test_weight_grid_and_paired_difference():
    from organscope.training.crossval import paired_difference, weight_grid

    grid = weight_grid(3, 0.25)
    assert len(grid) == 15 and all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.25, 0.25, 0.5) in grid and len(set(grid)) == len(grid)
    assert weight_grid(2, 0.1)[0] == (1.0, 0.0) and len(weight_grid(2, 0.1)) == 11
    a = {c: {"organs": {"x": {"dice": d}}} for c, d in (("p", 0.9), ("q", 0.7), ("r", 0.8))}
    b = {c: {"organs": {"x": {"dice": r["organs"]["x"]["dice"] - 0.1}}} for c, r in a.items()}
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.1) and d["cases"] == 3
    assert d["difference_95ci"] == pytest.approx([0.1, 0.1])  # the same shift on every case: no spread


def test_ensemble_weights_are_chosen_without_the_cases_they_are_scored_on(tmp_path):
    """_weights_summary: the best weights over all folds, and a cross-fitted figure where each fold's cases are
    scored with the weights best on the other folds (two halves of one fold when there is one)."""
    import json

    from organscope.training.crossval import _weights_summary

    keys = ["1,0", "0.5,0.5", "0,1"]
    # fold 0 likes "0.5,0.5", fold 1 likes "0,1": cross-fitted, each fold is scored with the other's choice
    dice_ = {"0": {"1,0": 0.6, "0.5,0.5": 0.9, "0,1": 0.5}, "1": {"1,0": 0.6, "0.5,0.5": 0.7, "0,1": 0.95}}
    cases = {"0": ["a", "b"], "1": ["c", "d"]}
    done = {"members": ["sparse", "cnn3d"], "folds": {f: {k: {c: {"organs": {"x": {"dice": dice_[f][k]}}}
                                                              for c in cases[f]} for k in keys} for f in dice_}}
    out = _weights_summary(done, keys, tmp_path / "w.json")
    assert out["best"]["weights"] == "0.5,0.5" and out["best"]["mean_dice"] == pytest.approx(0.8)
    assert out["cross_fitted"]["chosen_per_group"] == ["0,1", "0.5,0.5"]
    assert out["cross_fitted"]["mean_dice"] == pytest.approx((0.5 + 0.7) / 2)
    assert out["cross_fitted_minus_member"]["sparse"]["difference"] == pytest.approx(0.6 - 0.6)
    assert json.loads((tmp_path / "w.json").read_text())["best"]["weights"] == "0.5,0.5"
    one = {"members": done["members"], "folds": {"0": done["folds"]["0"]}}
    halves = _weights_summary(one, keys, tmp_path / "w1.json")
    assert halves["cross_fitted"]["chosen_per_group"] == ["0.5,0.5", "0.5,0.5"]
    assert halves["cross_fitted"]["cases"] == 2


@pytest.mark.filterwarnings("error::RuntimeWarning")  # one case: no cross-fitted halves, and no empty mean
def test_a_shipped_member_is_swept_only_on_the_patients_it_never_saw(tmp_path, monkeypatch):
    """crossval ensemble --members sparse=CV,cnn3d=shipped: the sparse member's fold models beside the shipped cnn3d
    model, fused on the fold's held-out patients of the validation split only (the shipped cnn3d trained on the
    training split)."""
    import organscope.engines.registry as registry
    from organscope.segmentation import ClassProbabilities
    from organscope.training import crossval

    _phantom_dataset(tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    meta["cases"][0]["split"] = "validation"  # syn_a: never seen by the shipped cnn3d; syn_b: a training patient
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "cv" / "fold0").mkdir(parents=True)
    (tmp_path / "cv" / "fold0" / "scores.json").write_text(json.dumps({"held_out": ["syn_a", "syn_b"]}))
    (tmp_path / "cv" / "fold0" / "sparse_fold0.onnx").write_bytes(b"")
    built, seen = [], []

    class Member:
        classes = ("background", "one", "two")
        body_region = None

        def __init__(self, name, model):
            self.name, self.model_path = name, model

        def class_probabilities(self, volume, progress=None):
            seen.append(self.name)
            hot = np.asarray(volume.array) > 200  # sphere 1 of the phantom
            p = np.stack([~hot, hot, np.zeros_like(hot)]).astype(np.float32)
            return ClassProbabilities(p, volume.affine, self.classes)

    def fake_get_engine(name, model=None, threads=None):
        built.append((name, None if model is None else Path(model).name))
        return Member(name, model)

    monkeypatch.setattr(registry, "get_engine", fake_get_engine)
    (tmp_path / "out").mkdir()
    out = crossval.sweep_weights({"sparse": tmp_path / "cv", "cnn3d": Path("shipped")}, tmp_path / "out",
                                 tmp_path / "data", step=0.5)
    assert sorted(built) == [("cnn3d", None), ("sparse", "sparse_fold0.onnx")]  # the shipped cnn3d: no model path
    assert seen == ["sparse", "cnn3d"]  # one case (syn_a), each member once
    done = json.loads((tmp_path / "out" / "sweep_weights.json").read_text())
    assert set(done["folds"]["0"]) == {"1,0", "0.5,0.5", "0,1"}
    assert all(set(cases) == {"syn_a"} for cases in done["folds"]["0"].values())
    assert out["best"]["dice"]["one"] == pytest.approx(1.0, abs=0.05)
    assert out["cross_fitted"]["chosen_per_group"] == [] and out["cross_fitted_minus_member"] == {}  # one case
    # a shipped model that trained on every case (as the sparse one does): no patient is left to sweep it on
    monkeypatch.setattr(crossval, "unseen_by_shipped", lambda engine, data_root: set())
    with pytest.raises(SystemExit, match="nothing to sweep"):
        crossval.sweep_weights({"cnn3d": tmp_path / "cv", "sparse": Path("shipped")}, tmp_path / "out2",
                               tmp_path / "data", step=0.5)
    # a model file with its card (e.g. a run exported by --against-shipped --run): swept on the patients its card
    # does not list
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cnn3d_r.onnx").write_bytes(b"")
    (tmp_path / "m" / "cnn3d_r.json").write_text(json.dumps({"training": {"cases": ["syn_b"]}}))
    built.clear(), seen.clear()
    (tmp_path / "out3").mkdir()
    crossval.sweep_weights({"sparse": tmp_path / "cv", "cnn3d": tmp_path / "m" / "cnn3d_r.onnx"}, tmp_path / "out3",
                           tmp_path / "data", step=0.5)
    assert sorted(built) == [("cnn3d", "cnn3d_r.onnx"), ("sparse", "sparse_fold0.onnx")] and len(seen) == 2


def test_a_model_file_member_and_a_run_against_shipped_use_only_patients_the_models_never_saw(tmp_path, monkeypatch):
    """unseen_by_model: the validation split less the cases a card lists as trained on or checkpoint-picking.
    crossval cnn3d --against-shipped --run RUN: a training-split run's model against the shipped cnn3d on the
    validation patients neither saw, paired; fold and all-cases runs are refused before anything is exported."""
    import organscope.engines.registry as registry
    from organscope.training import crossval

    _phantom_dataset(tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    for c in meta["cases"]:
        c["split"] = "validation"  # syn_a and syn_b: never seen by the shipped cnn3d
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(meta))
    card = {"training": {"cases": ["x1", "x2"], "checkpoint_cases": ["syn_b"]}}
    assert crossval.unseen_by_model(card, tmp_path / "data") == {"syn_a"}
    assert crossval.unseen_by_model({}, tmp_path / "data") == {"syn_a", "syn_b"}
    monkeypatch.setattr(crossval, "unseen_by_shipped", lambda engine, data_root: {"syn_a", "syn_b"})

    run = tmp_path / "run"
    run.mkdir()
    for data in ({"fold": 2, "all_cases": False}, {"fold": None, "all_cases": True}):
        (run / "data.json").write_text(json.dumps(data))
        with pytest.raises(SystemExit, match="not on the training split"):
            crossval.run_against_shipped(run, tmp_path / "out", tmp_path / "data", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    (run / "data.json").write_text(json.dumps({"fold": None, "all_cases": False}))

    def fake_export(run_dir, out_dir, name, cache, checkpoint="best.pt", threads=2):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps({"training": {
            **card["training"], "settings": {"lr": 2e-4}, "patches": {}, "steps": 5, "minutes": 1.0,
            "history": [{"warm_start_from": "cnn3d_openkbp.onnx"}]}}))
        return out_dir / f"{name}.onnx"

    scored = []

    def fake_score(eng, data_root, cases, quiet=False):
        scored.append((eng, cases))
        d = 0.8 if eng == "run" else 0.7
        return {c: {"organs": {"one": {"dice": d}}} for c in cases}

    monkeypatch.setattr(crossval, "export_cnn3d_fold", fake_export)
    monkeypatch.setattr(crossval, "score_cases", fake_score)
    monkeypatch.setattr(registry, "get_engine", lambda name, model=None, threads=None:
                        "run" if model is not None else "shipped")
    out = crossval.run_against_shipped(run, tmp_path / "out", tmp_path / "data", tmp_path / "cache", name="r")
    assert scored == [("run", ["syn_a"]), ("shipped", ["syn_a"])]  # syn_b picked the run's checkpoint
    assert out["cases"] == 1 and out["run_minus_shipped"]["difference"] == pytest.approx(0.1)
    assert out["warm_start_from"] == "cnn3d_openkbp.onnx"
    # the exported run as an ensemble member: a model file with its card is one model, not a cv folder
    assert crossval._single_model(tmp_path / "out" / "r.onnx") and crossval._single_model(Path("shipped"))
    assert not crossval._single_model(tmp_path / "cv")
    assert crossval._card_of(tmp_path / "out" / "r.onnx")["training"]["checkpoint_cases"] == ["syn_b"]
    with pytest.raises(SystemExit, match="no model card"):
        crossval._card_of(tmp_path / "nowhere.onnx")


def test_pooled_folds_are_one_set_of_held_out_cases(tmp_path):
    import json

    from organscope.training.crossval import pool

    def write(fold, cases):
        (tmp_path / f"fold{fold}").mkdir()
        scores = {c: {"organs": {"x": {"dice": d}}} for c, d in cases.items()}
        (tmp_path / f"fold{fold}" / "scores.json").write_text(json.dumps(
            {"fold": fold, "summary": {"mean_dice": 0.0}, "cases": scores}))

    write(0, {"a": 0.5, "b": 0.7})
    write(1, {"c": 0.9})
    pooled = pool(tmp_path)
    assert [f["fold"] for f in pooled["folds"]] == [0, 1]
    assert pooled["summary"]["cases"] == 3 and pooled["summary"]["mean_dice"] == pytest.approx(0.7)
    write(2, {"a": 0.1})  # a case held out twice: the folds are not a partition
    with pytest.raises(SystemExit, match="two folds"):
        pool(tmp_path)


def test_cnn3d_fold_training_never_touches_the_folds_held_out_cases():
    pytest.importorskip("torch")
    from organscope.training.folds import assign_folds
    from organscope.training.train_cnn3d import training_cases

    ids = [f"case_{i:03d}" for i in range(203)]
    meta = {"cases": ids, "splits": ["train"] * 170 + ["validation"] * 33}
    train, val = training_cases(meta, 11)  # no fold: the train split, and 11 validation cases
    assert len(train) == 170 and len(val) == 11 and all(meta["splits"][n] == "validation" for n in val)
    folds = assign_folds(ids)
    seen = set()
    for fold in range(5):
        train, val = training_cases(meta, 11, fold)
        held = {n for n, c in enumerate(ids) if folds[c] == fold}
        assert not (set(train) | set(val)) & held and not set(train) & set(val)
        assert len(val) == 11 and len(train) + len(val) + len(held) == 203
        seen |= held
    assert seen == set(range(203))
    with pytest.raises(ValueError, match="fold"):
        training_cases(meta, 11, 7)
    # every case, whatever its split: the fold recipe with nothing left out, 11 of them picking the checkpoint
    train, val = training_cases(meta, 11, all_cases=True)
    assert len(val) == 11 and not set(train) & set(val) and set(train) | set(val) == set(range(203))
    assert {meta["splits"][n] for n in val} == {"train", "validation"}
    with pytest.raises(ValueError, match="exclude each other"):
        training_cases(meta, 11, 0, all_cases=True)


def test_prior_bias_at_the_shipped_alpha_is_the_shipped_bias():
    from organscope.modelcard import MODELS_DIR
    from organscope.training.crossval import prior_bias

    card = json.loads((MODELS_DIR / "sparse_openkbp.json").read_text())
    # the card's priors are stored rounded, hence the tolerance
    np.testing.assert_allclose(prior_bias(card["calibration"]["alpha"]), card["logit_bias"], atol=5e-4)
    assert not prior_bias(0.0).any()


def _two_scored_folds(cv_dir: Path, organ: str) -> None:
    """Folds 0 (cases a, b) and 1 (case c) as crossval leaves them: scores.json with the fold model's own scores
    (Dice 0.7 on `organ`)."""
    for fold, held in ((0, ["a", "b"]), (1, ["c"])):
        (cv_dir / f"fold{fold}").mkdir()
        card = {c: {"organs": {organ: {"dice": 0.7, "confidence": 0.9}}} for c in held}
        (cv_dir / f"fold{fold}" / "scores.json").write_text(json.dumps({"fold": fold, "held_out": held,
                                                                        "cases": card}))


def test_alpha_sweep_rescores_each_fold_once_per_alpha_and_pools_complete_alphas(tmp_path, monkeypatch):
    from organscope.training import crossval

    calls = []

    def fake_score(onnx_path, data_root, cases, *, threads=2, logit_bias=None, quiet=False):
        calls.append((onnx_path.name, round(float(logit_bias[1]), 4)))
        d = 0.8 - abs(float(logit_bias[1]) + 1.0)  # best near a brainstem bias of -1 (alpha 0.5: -1.07)
        return {c: {"organs": {"brainstem": {"dice": d, "confidence": 0.9}}, "seconds": 0.1} for c in cases}

    monkeypatch.setattr(crossval, "score_fold", fake_score)
    _two_scored_folds(tmp_path, "brainstem")
    first = crossval.sweep_alpha(tmp_path, tmp_path, [0.0, 0.5])
    assert len(calls) == 4 and first["folds"] == ["0", "1"] and set(first["pooled"]) == {"0", "0.5"}
    assert first["pooled"]["0.5"]["cases"] == 3
    assert first["pooled"]["0.5"]["mean_dice"] > first["pooled"]["0"]["mean_dice"]
    again = crossval.sweep_alpha(tmp_path, tmp_path, [0.0, 0.5, 1.0])  # only alpha 1 is new
    assert len(calls) == 6 and set(again["pooled"]) == {"0", "0.5", "1"}


def test_organ_bias_and_mirror_sweeps_pass_their_variant_to_each_fold(tmp_path, monkeypatch):
    from organscope.training import crossval

    calls = []

    def fake_score(onnx_path, data_root, cases, *, threads=2, bias_delta=None, mirror_weight=0.0, quiet=False):
        calls.append((onnx_path.name, bias_delta, mirror_weight))
        d = 0.7 + 0.01 * (bias_delta or {}).get("larynx", 0.0) - 0.02 * mirror_weight
        return {c: {"organs": {"larynx": {"dice": d, "confidence": 0.9}}, "seconds": 0.1} for c in cases}

    monkeypatch.setattr(crossval, "score_fold", fake_score)
    _two_scored_folds(tmp_path, "larynx")
    bias = crossval.sweep_organ_bias(tmp_path, tmp_path, "larynx", [0.0, 0.5])
    assert set(bias["pooled"]) == {"larynx+0", "larynx+0.5"}
    assert bias["pooled"]["larynx+0.5"]["mean_dice"] == pytest.approx(0.705)
    assert bias["minus_card"]["larynx+0.5"]["difference"] == pytest.approx(0.005)  # paired with the folds' scores
    assert bias["minus_card"]["larynx+0"]["difference"] == pytest.approx(0.0)
    assert ("sparse_fold1.onnx", {"larynx": 0.5}, 0.0) in calls
    mirror = crossval.sweep_mirror(tmp_path, tmp_path, [0.0, 0.5])
    assert mirror["pooled"]["mirror=0.5"]["mean_dice"] == pytest.approx(0.69)
    assert len(calls) == 8 and json.loads((tmp_path / "sweep_mirror.json").read_text())["folds_swept"] == ["0", "1"]


def test_mirror_averaging_swaps_lateral_organs_of_the_mirrored_descriptor():
    from organscope.engines.sparse import SparseModel
    from organscope.training.crossval import mirror_averaged

    plain = SparseModel.load(threads=1)
    rng = np.random.default_rng(1)
    d = rng.integers(90, 170, (5, plain.pattern.size)).astype(np.uint8)
    cols = plain.pattern.mirror_index()
    classes = list(plain.classes)
    twins = [classes.index({"parotid_right": "parotid_left", "parotid_left": "parotid_right"}.get(c, c))
             for c in classes]
    p, q = plain.predict(d), plain.predict(np.ascontiguousarray(d[:, cols]))[:, twins]
    assert np.allclose(mirror_averaged(SparseModel.load(threads=1), 1.0).predict(d), q, atol=1e-6)
    assert np.allclose(mirror_averaged(SparseModel.load(threads=1), 0.5).predict(d), (p + q) / 2, atol=1e-6)
    assert not np.allclose(p, q, atol=1e-3)  # the mirror changes the answer: the check above can fail


def _tiny_cnn3d_cache(cache, ids, organs):
    """A synthetic cnn3d training cache (random 16^3 scans and targets, every organ contoured)."""
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = len(ids)
    np.save(cache / "images.npy", rng.integers(-1000, 400, (n, 16, 16, 16)).astype(np.int16))
    np.save(cache / "targets.npy", rng.integers(0, 2 + len(organs), (n, 16, 16, 16)).astype(np.int8))
    np.save(cache / "contoured.npy", np.ones((n, len(organs)), bool))
    (cache / "cases.json").write_text(json.dumps({"cases": ids, "splits": ["train"] * n, "organs": organs,
                                                  "grid": [16, 16, 16]}))
    return cache


def test_cnn3d_fold_export_fits_offsets_on_the_folds_training_cases_only(tmp_path):
    """export_cnn3d_fold on a tiny network and a synthetic cache: the offsets come from every sixth of the run's
    training cases (data.json), never from cases outside them; the card keeps the shipped grid and records the
    fold; the exported model loads in the cnn3d engine."""
    from organscope.engines.cnn3d import Cnn3dEngine
    from organscope.modelcard import MODELS_DIR
    from organscope.training.cnn3d_net import Cnn3dNet
    from organscope.training.crossval import export_cnn3d_fold
    from organscope.training.logit_offsets import cached_samples

    organs = json.loads((MODELS_DIR / "cnn3d_openkbp.json").read_text())["classes"][1:]
    ids = [f"case_{i:02d}" for i in range(14)]
    cache, run = _tiny_cnn3d_cache(tmp_path / "cache", ids, organs), tmp_path / "run"
    run.mkdir()
    train = ids[2:14:2]  # 6 training cases: every sixth is the first of them only
    (run / "data.json").write_text(json.dumps({"fold": 3, "cases": train, "checkpoint_cases": ids[1:2]}))
    torch.manual_seed(0)
    net = Cnn3dNet(2 + len(organs), width=4)
    settings = {"width": 4}
    (run / "settings.json").write_text(json.dumps({"organs": organs, "settings": settings, "plan": {}}))
    torch.save({"net": net.state_dict(), "state": {"step": 1, "elapsed_s": 1.0, "history": []}}, run / "best.pt")
    onnx_path = export_cnn3d_fold(run, tmp_path / "out", "cnn3d_fold3", cache, threads=1)
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["training"]["fold"] == 3 and card["training"]["cases"] == train
    assert card["logit_offsets_fit"]["cases"].endswith("(1)") and len(card["logit_offsets"]) == 2 + len(organs)
    picked = cached_samples(onnx_path, cache, threads=1, cases=train)
    assert len(picked) == 1
    np.testing.assert_array_equal(picked[0][1], np.load(cache / "targets.npy")[2])  # case_02, a training case
    assert Cnn3dEngine(model=onnx_path, threads=1).classes == ("background", *organs)


def test_ship_cnn3d_ships_an_all_cases_run_with_its_folds_estimate_and_refuses_another_recipe(tmp_path):
    """ship_cnn3d on a tiny network: an --all-cases run of the folds' recipe is exported with offsets from its
    own training cases and a card that carries the folds' pooled out-of-fold figure, the previous card's
    geometry, and the run-length difference recorded; a run with another patch plan, or one that left a fold
    out, is refused before anything is written."""
    from organscope.engines.cnn3d import Cnn3dEngine
    from organscope.modelcard import MODELS_DIR
    from organscope.training import ship_cnn3d
    from organscope.training.cnn3d_net import Cnn3dNet

    shipped = json.loads((MODELS_DIR / "cnn3d_openkbp.json").read_text())
    organs = shipped["classes"][1:]
    ids = [f"case_{i:02d}" for i in range(14)]
    cache = _tiny_cnn3d_cache(tmp_path / "cache", ids, organs)
    run, cv, data = (tmp_path / n for n in ("run", "cv", "data"))
    for d in (run, cv / "fold0", cv / "fold1", data):
        d.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **{o: i + 1 for i, o in
                                                                                  enumerate(organs)}},
                                                   "cases": [{"case": c, "split": "validation" if i < 3 else "train",
                                                              "organs": organs} for i, c in enumerate(ids)]}))
    settings = {"width": 4, "lr": 1e-3, "hours": 1.9, "val_every": 1000, "threads": 1}
    patches = {"size": [48, 48, 64], "balance_organs": True}
    for k in (0, 1):
        held = ids[k * 7:(k + 1) * 7]
        (cv / f"fold{k}" / f"cnn3d_fold{k}.json").write_text(json.dumps(
            {"training": {"fold": k, "settings": settings, "patches": patches}}))
        (cv / f"fold{k}" / "scores.json").write_text(json.dumps(
            {"fold": k, "summary": {}, "cases": {c: {"organs": {"brainstem": {"dice": 0.5 + 0.1 * k}}}
                                                 for c in held}}))
    torch.manual_seed(0)
    history = [{"step": 0, "val_mean_dice": 0.4}, {"step": 5, "val_mean_dice": 0.5}]
    torch.save({"net": Cnn3dNet(2 + len(organs), width=4).state_dict(),
                "state": {"step": 5, "elapsed_s": 60.0, "history": history}}, run / "best.pt")

    def write_run(settings_, patches_, fold=None, checkpoint_cases=ids[:1]):
        (run / "settings.json").write_text(json.dumps({"settings": settings_, "plan": patches_, "organs": organs}))
        (run / "data.json").write_text(json.dumps({"fold": fold, "all_cases": fold is None, "cases": ids[1:],
                                                   "checkpoint_cases": checkpoint_cases}))

    argv = ["--run", str(run), "--cv", str(cv), "--cache", str(cache), "--data", str(data), "--out",
            str(tmp_path / "out"), "--threads", "1"]
    write_run({**settings, "threads": 2}, {**patches, "balance_organs": False})
    with pytest.raises(SystemExit, match="not trained with the recipe of the folds"):
        ship_cnn3d.main(argv)
    write_run(settings, patches, checkpoint_cases=[])
    with pytest.raises(SystemExit, match="did not train on every case"):
        ship_cnn3d.main(argv)
    assert not (tmp_path / "out").exists()

    write_run({**settings, "hours": 1.7, "threads": 2}, patches)
    ship_cnn3d.main(argv)
    onnx_path = tmp_path / "out" / "cnn3d_openkbp.onnx"
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["training"]["differences_from_folds"] == [f"settings.hours: run 1.7, fold{k} 1.9" for k in (0, 1)]
    assert card["validation"]["folds"] == [0, 1] and card["validation"]["cases"] == 14
    assert card["validation"]["mean_dice"] == pytest.approx(0.55)
    assert card["grid"] == shipped["grid"] and card["spacing_mm"] == shipped["spacing_mm"]
    assert "variants" not in card and card["training"]["data"].startswith("OpenKBP (Babier et al. 2021), all 14")
    assert len(card["logit_offsets"]) == 2 + len(organs)
    assert card["known_limitations"][1] == ("Trained 0.0 h on a CPU (5 steps, from scratch); its checkpoint-selection "
                                            "Dice was still rising at the end (0.400 -> 0.500).")
    assert Cnn3dEngine(model=onnx_path, threads=1).classes == ("background", *organs)


def test_ship_cnn3d_ships_a_fine_tune_of_the_shipped_model_with_its_checked_twins_estimate(tmp_path):
    """ship_cnn3d --checked: an --all-cases warm restart of the shipped model is shipped with the figures of the
    same recipe run on the training split and checked against the shipped model on unseen patients; a run from
    scratch, a checked run that is not a fine-tune of the shipped model, or another learning rate is refused before
    anything is written."""
    from organscope.engines.cnn3d import Cnn3dEngine
    from organscope.modelcard import MODELS_DIR
    from organscope.training import ship_cnn3d
    from organscope.training.cnn3d_net import Cnn3dNet

    shipped = json.loads((MODELS_DIR / "cnn3d_openkbp.json").read_text())
    organs = shipped["classes"][1:]
    ids = [f"case_{i:02d}" for i in range(14)]
    cache = _tiny_cnn3d_cache(tmp_path / "cache", ids, organs)
    run, checked, data = (tmp_path / n for n in ("run", "checked", "data"))
    for d in (run, checked, data):
        d.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **{o: i + 1 for i, o in
                                                                                  enumerate(organs)}},
                                                   "cases": [{"case": c, "split": "validation" if i < 3 else "train",
                                                              "organs": organs} for i, c in enumerate(ids)]}))
    settings = {"width": 4, "lr": 2e-4, "hours": 1.0, "val_every": 1500, "freeze_batchnorm": True, "threads": 1}
    patches = {"size": [48, 48, 64], "balance_organs": True}
    figures = {"mean_dice": 0.68, "mean_dice_95ci": [0.64, 0.71], "dice": {"brainstem": 0.7}, "cases": 22}
    record = {"run": "ft170", "warm_start_from": "src/organscope/models/cnn3d_openkbp.onnx", "settings": settings,
              "patches": patches, "checkpoint_cases": ids[:1], "cases": 22, "run_model": figures,
              "shipped": {**figures, "mean_dice": 0.67},
              "run_minus_shipped": {"difference": 0.01, "difference_95ci": [0.0, 0.02], "cases": 22}}
    (run / "settings.json").write_text(json.dumps({"settings": {**settings, "hours": 1.1}, "plan": patches,
                                                   "organs": organs}))
    (run / "data.json").write_text(json.dumps({"fold": None, "all_cases": True, "cases": ids[1:],
                                               "checkpoint_cases": ids[:1]}))
    torch.manual_seed(0)
    net = Cnn3dNet(2 + len(organs), width=4).state_dict()

    def save_run(start):
        history = [{"step": 0, **({"warm_start_from": start} if start else {})}, {"step": 0, "val_mean_dice": 0.6},
                   {"step": 5, "val_mean_dice": 0.61}]
        for name in ("best.pt", "last.pt"):
            torch.save({"net": net, "state": {"step": 5, "elapsed_s": 60.0, "history": history}}, run / name)

    argv = ["--run", str(run), "--checked", str(checked), "--cache", str(cache), "--data", str(data), "--out",
            str(tmp_path / "out"), "--threads", "1"]
    save_run("src/organscope/models/cnn3d_openkbp.onnx")
    with pytest.raises(SystemExit, match="run_against_shipped.json is missing"):
        ship_cnn3d.main(argv)
    (checked / "run_against_shipped.json").write_text(json.dumps({**record, "warm_start_from": None}))
    with pytest.raises(SystemExit, match="the checked run .* is not a warm restart of the shipped"):
        ship_cnn3d.main(argv)
    (checked / "run_against_shipped.json").write_text(json.dumps({**record, "settings": {**settings, "lr": 1e-3}}))
    with pytest.raises(SystemExit, match="not trained with the recipe of the checked run"):
        ship_cnn3d.main(argv)
    (checked / "run_against_shipped.json").write_text(json.dumps({**record, "checkpoint": "last.pt"}))
    with pytest.raises(SystemExit, match="pick the same checkpoint"):
        ship_cnn3d.main(argv)
    (checked / "run_against_shipped.json").write_text(json.dumps(record))
    save_run(None)
    with pytest.raises(SystemExit, match="started from scratch"):
        ship_cnn3d.main(argv)
    assert not (tmp_path / "out").exists()

    save_run("src/organscope/models/cnn3d_openkbp.onnx")
    ship_cnn3d.main(argv)
    onnx_path = tmp_path / "out" / "cnn3d_openkbp.onnx"
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    v = card["validation"]
    assert v["estimate_from"] == str(checked) and v["mean_dice"] == 0.68 and v["previous_model_mean_dice"] == 0.67
    assert v["minus_previous_model"]["difference"] == 0.01 and v["cases"] == 22 and "folds" not in v
    assert card["training"]["differences_from_checked_run"] == ["settings.hours: run 1.1, the checked run 1.0"]
    assert card["training"]["data"].startswith("OpenKBP (Babier et al. 2021), all 14 cases")
    assert "warm-started from the previous shipped model" in card["training"]["data"]
    assert card["training"]["previous_model"]["steps"] == shipped["training"]["steps"] or (
        card["training"]["previous_model"] == shipped["training"].get("previous_model"))
    assert card["known_limitations"][0].startswith("Estimated mean Dice 0.680 (0.640-0.710) from the same recipe")
    assert "warm-started" in card["known_limitations"][1]
    assert card["grid"] == shipped["grid"] and len(card["logit_offsets"]) == 2 + len(organs)
    assert Cnn3dEngine(model=onnx_path, threads=1).classes == ("background", *organs)


def test_cross_fitted_interval_does_not_depend_on_string_hashing(tmp_path):
    """The cross-fitted bootstrap resamples the chosen cases in a fixed order: the same file gives the same
    interval in processes with different hash seeds (set order of the case ids)."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    keys = ["1,0", "0.5,0.5", "0,1"]
    done = {"members": ["a", "b"], "folds": {"0": {k: {f"case_{i:03d}": {"organs": {"x": {"dice": float(d)}}}
                                                       for i, d in enumerate(rng.uniform(0, 1, 40))}
                                                   for k in keys}}}
    src = tmp_path / "done.json"
    src.write_text(json.dumps(done))
    code = ("import json, sys, pathlib; from organscope.training.crossval import _weights_summary; "
            "d = json.loads(pathlib.Path(sys.argv[1]).read_text()); "
            "print(json.dumps(_weights_summary(d, sys.argv[2].split(';'), pathlib.Path(sys.argv[3]))['cross_fitted']))")
    out = [subprocess.run([sys.executable, "-c", code, str(src), ";".join(keys), str(tmp_path / f"w{seed}.json")],
                          env={**os.environ, "PYTHONHASHSEED": str(seed)}, capture_output=True, text=True,
                          check=True).stdout for seed in (1, 2, 3)]
    assert out[0] == out[1] == out[2]


def _synthetic_cnn3d_cache(root, n_cases=40, size=32):
    """A cnn3d training cache of `n_cases` random scans (all splits 'train' but the last quarter)."""
    organs = ["brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible"]
    ids = [f"case_{i:02d}" for i in range(n_cases)]
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    np.save(cache / "images.npy", rng.integers(-1000, 400, (n_cases, size, size, size)).astype(np.int16))
    np.save(cache / "targets.npy", rng.integers(0, 2 + len(organs), (n_cases, size, size, size)).astype(np.int8))
    np.save(cache / "contoured.npy", np.ones((n_cases, len(organs)), bool))
    splits = ["train"] * (n_cases * 3 // 4) + ["validation"] * (n_cases - n_cases * 3 // 4)
    (cache / "cases.json").write_text(json.dumps({"cases": ids, "splits": splits, "organs": organs,
                                                  "grid": [size] * 3}))
    return cache, ids


def test_cascade_fold_training_never_touches_the_folds_held_out_cases(tmp_path):
    """train_cascade --fold on a synthetic cache: the group network trains on, and picks its checkpoint on, cases
    outside the fold only (RUN/data.json, which crossval checks)."""
    from organscope.training.folds import assign_folds
    from organscope.training.train_cascade import CascadeSettings, train_group

    cache, ids = _synthetic_cnn3d_cache(tmp_path)  # 11 of the cases outside the fold pick the checkpoint
    train_group(cache, tmp_path / "run", "midline", CascadeSettings(minutes=5, steps=2, width=4, val_every=1000),
                fold=2)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    held = {c for c, f in assign_folds(ids).items() if f == 2}
    assert data["fold"] == 2 and held and not (set(data["cases"]) | set(data["checkpoint_cases"])) & held
    assert set(data["cases"]) | set(data["checkpoint_cases"]) == set(ids) - held
    assert (tmp_path / "run" / "last.pt").exists()


def test_cascade_fold_export_keeps_its_heatmap_beside_the_card_and_segments(tmp_path):
    """export_cascade_fold: the three group runs and the heat-map run of one fold -> a card with the group
    networks and the fold's heat-map model beside it (found there by the engine, wherever the working folder is),
    offsets fitted where the shipped card has them; runs of different folds are refused."""
    import shutil

    from organscope.engines.registry import get_engine
    from organscope.io import load_volume
    from organscope.modelcard import MODELS_DIR
    from organscope.training.crossval import export_cascade_fold
    from organscope.training.train_cascade import CascadeSettings, train_group

    if not (MODELS_DIR / "heatmap_openkbp.onnx").exists():
        pytest.skip("no shipped heat-map model")
    cache, ids = _synthetic_cnn3d_cache(tmp_path)
    shipped = json.loads((MODELS_DIR / "cascade_openkbp.json").read_text())
    runs = {}
    for g in shipped["groups"]:
        runs[g] = tmp_path / f"run_{g}"
        train_group(cache, runs[g], g, CascadeSettings(minutes=5, steps=1, width=4, val_every=1000), fold=2)
    heat = tmp_path / "heat"
    heat.mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copy2(MODELS_DIR / f"heatmap_openkbp{suffix}", heat / f"heatmap_openkbp{suffix}")
    heat_card = json.loads((heat / "heatmap_openkbp.json").read_text())
    heat_card["tau"] = 0.987  # a mark: the engine must read this copy, not the shipped heat-map model
    (heat / "heatmap_openkbp.json").write_text(json.dumps(heat_card))
    (heat / "data.json").write_text(json.dumps({"fold": 1, "cases": ids[:5]}))
    with pytest.raises(SystemExit, match="one cross-validation fold"):
        export_cascade_fold(runs, heat, tmp_path / "out", "cascade_fold2", cache, threads=1)
    (heat / "data.json").write_text(json.dumps({"fold": 2, "cases": ids[:5]}))
    card_path = export_cascade_fold(runs, heat, tmp_path / "out", "cascade_fold2", cache, threads=1)
    card = json.loads(card_path.read_text())
    assert card["fold"] == 2 and card["heatmap_model"] == "cascade_fold2_heatmap.onnx"
    assert (card_path.parent / card["heatmap_model"]).exists()
    for g, spec in card["groups"].items():
        assert (card_path.parent / spec["file"]).exists() and spec["training"]["fold"] == 2
        assert (spec["logit_offsets"] is None) == (shipped["groups"][g].get("logit_offsets") is None)
    eng = get_engine("cascade", model=card_path, threads=1)
    seg = eng.segment(load_volume(SCAN))
    assert seg.labels.shape == load_volume(SCAN).shape
    assert eng._locator.tau == pytest.approx(0.987)


def test_confidence_threshold_is_the_highest_where_organs_below_were_nearly_all_wrong(tmp_path):
    from organscope.training.crossval import confidence_threshold

    organs = {"a": (0.55, 0.1), "b": (0.62, 0.2), "c": (0.66, 0.8), "d": (0.68, 0.3), "e": (0.9, 0.9),
              "f": (0.95, None)}
    for fold, names in ((0, "abc"), (1, "def")):
        (tmp_path / f"fold{fold}").mkdir()
        cases = {f"case_{n}": {"organs": {"x": {"confidence": organs[n][0], "dice": organs[n][1]}}} for n in names}
        (tmp_path / f"fold{fold}" / "scores.json").write_text(json.dumps({"cases": cases}))
    r = confidence_threshold(tmp_path, min_precision=0.9, grid=(0.6, 0.65, 0.67, 0.7))
    assert r["threshold"] == 0.65 and r["organs_scored"] == 5 and r["failures"] == 3
    assert r["per_threshold"]["0.70"] == {"below": 4, "failures_below": 3, "mean_dice_below": 0.35}
    assert confidence_threshold(tmp_path, min_precision=0.7, grid=(0.6, 0.65, 0.67, 0.7))["threshold"] == 0.7
    # cross-fitted: fold 0's threshold comes from fold 1 alone (0.70: d below, a failure) and leaves out a, b, c
    # (two failures); fold 1's from fold 0 (0.65: a and b below, both failures) leaves out nothing
    cross = r["cross_fitted"]
    assert [f["threshold"] for f in cross["per_fold"].values()] == [0.7, 0.65]
    assert (cross["below"], cross["failures_below"], cross["failures"]) == (3, 2, 3)


def test_ensemble_confidence_threshold_is_fitted_for_the_weights_every_fold_chose(tmp_path):
    from organscope.training.crossval import ensemble_confidence_threshold

    def case(conf, dice):
        return {"organs": {"x": {"confidence": conf, "dice": dice}}}

    folds = {"0": {"1,0": {"c0": case(0.3, 0.9)}, "0.5,0.5": {"c0": case(0.6, 0.1), "c1": case(0.9, 0.9)}},
             "1": {"1,0": {"c2": case(0.3, 0.9)}, "0.5,0.5": {"c2": case(0.62, 0.2), "c3": case(0.8, 0.7)}}}
    sweep = {"members": ["sparse", "cnn3d"], "folds": folds,
             "cross_fitted": {"chosen_per_group": ["0.5,0.5", "0.5,0.5"]}}
    (tmp_path / "sweep_weights.json").write_text(json.dumps(sweep))
    r = ensemble_confidence_threshold(tmp_path)
    # the chosen weights' organs only: up to 0.80 the organs below are the two failures, above it the 0.8 joins
    assert r["weights"] == "0.5,0.5" and r["organs_scored"] == 4 and r["threshold"] == 0.8
    # fold 0 gets fold 1's 0.80 (leaves out its failure); fold 1 gets fold 0's 0.90 (leaves out both its organs)
    assert [f["threshold"] for f in r["cross_fitted"]["per_fold"].values()] == [0.8, 0.9]
    assert (r["cross_fitted"]["below"], r["cross_fitted"]["failures_below"]) == (3, 2)
    sweep["cross_fitted"]["chosen_per_group"] = ["0.5,0.5", "1,0"]
    (tmp_path / "sweep_weights.json").write_text(json.dumps(sweep))
    with pytest.raises(SystemExit, match="chose different weights"):
        ensemble_confidence_threshold(tmp_path)
    named = ensemble_confidence_threshold(tmp_path, weights="1,0")  # weights named: no choice needed
    assert named["weights"] == "1,0" and named["organs_scored"] == 2
    with pytest.raises(SystemExit, match="no weights 0.3,0.7"):
        ensemble_confidence_threshold(tmp_path, weights="0.3,0.7")


def test_mirrored_chunks_read_the_pattern_flipped_and_swap_left_and_right(tmp_path):
    """flip_fraction 1: every chunk reads the descriptor with the pattern's R-L offsets negated, and its labels
    (and, for partial labels, the uncontoured organs) become their left-right counterparts."""
    from organscope.training.sparse_data import EpochSampler, mirror_lut

    _phantom_dataset(tmp_path / "data")
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "gland_right": 1, "gland_left": 2}
    for c in meta["cases"]:
        c["organs"] = ["gland_right", "gland_left"] if c["organs"] == ["one", "two"] else ["gland_right"]
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(meta))
    assert mirror_lut(meta["labels"]).tolist() == [0, 2, 1]
    assert mirror_lut({"background": 0, "brainstem": 1, "parotid_right": 3}).tolist() == [0, 1, 2, 3]
    pattern = paper_pattern()
    plan = SamplingPlan(n_body=60, n_band=30, n_balanced=30, aug_fraction=0.0, flip_fraction=1.0)
    sampler = EpochSampler(tmp_path / "data", pattern, plan)
    X = np.zeros((sampler.size, pattern.size), np.int8)
    y, bits, case = sampler.fill(X, np.random.default_rng(3))
    plain = EpochSampler(tmp_path / "data", pattern, SamplingPlan(n_body=60, n_band=30, n_balanced=30,
                                                                   aug_fraction=0.0))
    Xp = np.zeros_like(X)
    yp, bitsp, _ = plain.fill(Xp, np.random.default_rng(3))
    first = case == 0  # the same points in the same rows (drawn before any chunk's flip)
    np.testing.assert_array_equal(y[first], np.array([0, 2, 1])[yp[first]])
    # feature i of a mirrored row reads the voxel that the plain row's feature at the mirrored offset reads
    vox = pattern.offsets_vox(sampler.index[0].affine)
    at = {tuple(v): j for j, v in enumerate(vox)}
    mirror = np.array([at[(-v[0], v[1], v[2])] for v in vox])
    np.testing.assert_array_equal(X[first], Xp[first][:, mirror])
    assert not np.array_equal(X[first], Xp[first])
    # partial labels: case b does not contour gland_left (2); mirrored, its background may be gland_right (1)
    second = case == 1
    background = second & (y == 0)
    assert background.any() and np.all(bits[background] == (1 | (1 << 1)))
    assert np.all(bitsp[(case == 1) & (yp == 0)] == (1 | (1 << 2)))


def test_ship_sparse_card_keeps_out_of_fold_choices_and_estimates_from_the_folds(tmp_path):
    """The model shipped after cross-validation: its card keeps every setting chosen out of fold (logit bias,
    QC threshold, segmentation), takes the run's training record and weights' checks, and states the folds'
    pooled out-of-fold Dice as its accuracy, with the validation split's own out-of-fold figure beside it."""
    from organscope.training.ship_sparse import main, out_of_fold_validation, ship_card

    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "brainstem": 1}, "cases": [
        {"case": "a", "split": "train"}, {"case": "b", "split": "train"}, {"case": "c", "split": "validation"}]}))
    cv = tmp_path / "cv"
    cv.mkdir()
    _two_scored_folds(cv, "brainstem")
    val = out_of_fold_validation(cv, data)
    assert val["cases"] == 3 and val["folds"] == [0, 1] and val["mean_dice"] == 0.7
    assert val["validation_split_out_of_fold"]["cases"] == 1
    shipped = {"name": "sparse_openkbp", "logit_bias": [0.1, -1.0], "qc_min_confidence": 0.7,
               "segmentation": {"majority": 0}, "date": "2026-11-23",
               "training": {"data": "OpenKBP training split", "cases": ["a", "b"]},
               "validation": {"mean_dice": 0.698}}
    fold_card = {"training": {"cases": ["a", "b", "c"], "settings": {"epochs": 10}},
                 "onnx_parity_max_abs_diff": 1e-5, "quantization": {"first_layer": "uint8 x int8"}}
    card = ship_card(fold_card, shipped, val, "CMD")
    assert card["logit_bias"] == [0.1, -1.0] and card["qc_min_confidence"] == 0.7
    assert card["segmentation"] == {"majority": 0}
    assert card["training"]["cases"] == ["a", "b", "c"] and card["training"]["command"] == "CMD"
    assert "all 3 cases" in card["training"]["data"]
    assert card["training"]["previous_model"] == {"data": "OpenKBP training split", "cases": 2,
                                                  "date": "2026-11-23", "validation_mean_dice": 0.698}
    assert card["validation"] is val and card["date"] != "2026-11-23"
    assert shipped["training"]["cases"] == ["a", "b"]  # the shipped card itself is not changed
    again = ship_card(fold_card, card, val, "CMD")  # the same model exported again keeps the replaced one on record
    assert again["training"]["previous_model"] == card["training"]["previous_model"]
    assert ship_card(fold_card, card, val, "OTHER")["training"]["previous_model"]["cases"] == 3
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"cases": ["a", "b"]}))  # a run that left case c out
    with pytest.raises(SystemExit, match="--all-cases"):
        main(["--run", str(run), "--cv", str(cv), "--data", str(data), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_elastic_displacement_is_smooth_random_and_leaves_the_query_point_in_place():
    """The field moves the pattern's far samples by about its standard deviation, its fine samples next to the
    query point by a fraction of that, and the query point (offset 0) not at all; each draw differs."""
    from organscope.training.sparse_data import random_displacement

    pattern = paper_pattern()
    off = pattern.offsets_mm
    rng = np.random.default_rng(0)
    d = random_displacement(rng, off, 4.0, 32.0)
    assert d.shape == off.shape and np.isfinite(d).all()
    r = np.linalg.norm(off, axis=1)
    assert np.abs(d[r == 0]).max() < 1e-9
    far = np.linalg.norm(d[r > 100], axis=1)
    assert 1.0 < np.sqrt((far ** 2).mean() / 3) < 8.0  # per-axis spread of the order of 4 mm
    near = np.linalg.norm(d[(r > 0) & (r <= 4)], axis=1)
    assert near.max() < 0.5 * far.mean()  # next to the point, the anatomy bends, it does not jump
    assert not np.allclose(d, random_displacement(rng, off, 4.0, 32.0))
    with pytest.raises(ValueError, match="displacement_mm must be"):
        pattern.offsets_vox(np.eye(4), displacement_mm=d[:10])


def test_elastic_chunks_keep_points_and_labels_and_move_only_the_samples(tmp_path):
    """elastic_fraction 1: the same points and labels as without it (the field is drawn after the points), the
    centre sample unchanged, other samples read elsewhere; elastic_fraction 0 is the recipe's draw exactly."""
    from organscope.training.sparse_data import EpochSampler

    _phantom_dataset(tmp_path / "data")
    pattern = paper_pattern()
    base = dict(n_body=60, n_band=30, n_balanced=30, aug_fraction=0.0)
    draws = {}
    for name, plan in (("plain", SamplingPlan(**base)), ("off", SamplingPlan(**base, elastic_fraction=0.0)),
                       ("elastic", SamplingPlan(**base, elastic_fraction=1.0, elastic_mm=6.0))):
        sampler = EpochSampler(tmp_path / "data", pattern, plan)
        X = np.zeros((sampler.size, pattern.size), np.int8)
        y, bits, case = sampler.fill(X, np.random.default_rng(5))
        draws[name] = (X, y, bits, case)
    for a, b in zip(draws["plain"], draws["off"]):
        np.testing.assert_array_equal(a, b)
    first = draws["plain"][3] == 0  # case 0's rows: drawn before any chunk's field, so the same points
    np.testing.assert_array_equal(draws["elastic"][1][first], draws["plain"][1][first])
    centre = np.flatnonzero(np.linalg.norm(pattern.offsets_mm, axis=1) == 0)
    np.testing.assert_array_equal(draws["elastic"][0][first][:, centre], draws["plain"][0][first][:, centre])
    assert (draws["elastic"][0][first] != draws["plain"][0][first]).mean() > 0.01


def test_against_shipped_pairs_the_folds_and_the_shipped_model_on_validation_patients_only(tmp_path, monkeypatch):
    """--against-shipped scores the shipped model only on validation-split patients that the folds held out,
    and pairs each with its fold model's score."""
    import organscope.engines.registry as registry
    from organscope.training import crossval

    data = tmp_path / "data"
    data.mkdir()
    splits = {"a": "validation", "b": "validation", "c": "train", "d": "validation"}
    (data / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1}, "cases": [
        {"case": c, "split": s, "organs": ["x"]} for c, s in splits.items()]}))
    for k, cases in ((0, {"a": 0.6, "c": 0.9}), (1, {"b": 0.3})):
        (tmp_path / f"fold{k}").mkdir()
        (tmp_path / f"fold{k}" / "scores.json").write_text(json.dumps(
            {"fold": k, "summary": {}, "cases": {c: {"organs": {"x": {"dice": d}}} for c, d in cases.items()}}))
    scored = []

    def fake_score(eng, data_root, cases, quiet=False):
        scored.extend(cases)
        return {c: {"organs": {"x": {"dice": 0.5}}} for c in cases}

    monkeypatch.setattr(registry, "get_engine", lambda name, threads=None: object())
    monkeypatch.setattr(crossval, "score_cases", fake_score)
    out = crossval.against_shipped("cnn3d", tmp_path, data, threads=1)
    assert scored == ["a", "b"]  # c is a training-split patient, d no fold held out
    assert out["cases"] == 2 and out["fold_models"]["mean_dice"] == pytest.approx(0.45)
    assert out["fold_models_minus_shipped"]["difference"] == pytest.approx(-0.05)
