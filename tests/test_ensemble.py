"""The ensemble engine (engines/ensemble): members' class probabilities interpolated onto one fusion grid,
averaged with the weights, one argmax; checked against the same computation done here, on synthetic members with
known probabilities (fast), and end to end on the bundled scan with the shipped members."""
from pathlib import Path

import numpy as np
import pytest

from organscope.components import largest_components
from organscope.concurrency import kernels_run_concurrently
from organscope.engines.ensemble import EnsembleEngine
from organscope.errors import ModelError
from organscope.geometry import scale_affine
from organscope.segmentation import ClassProbabilities, Segmentation
from organscope.volume import Volume

CLASSES = ("background", "brainstem", "spinal_cord")
SCAN = Path(__file__).resolve().parents[1] / "src" / "organscope" / "data" / "okbp_validation_222.nii.gz"


class FakeMember:
    """A member engine whose class probabilities are fixed smooth fields on a grid `zoom` times coarser than the
    scan (like a network grid), in the scan's axis order."""

    def __init__(self, name, seed, zoom=(2, 2, 1), classes=CLASSES, region="head-and-neck"):
        self.name, self.classes, self.seed, self.zoom = name, classes, seed, np.asarray(zoom)
        self.body_region = region
        self.calls = 0

    def segment(self, volume, *, organs=None, probabilities=False, progress=None):
        self.calls += 1
        assert probabilities, "the ensemble asks every member for its probabilities"
        labels = volume.with_array(np.zeros(volume.shape, np.uint8))
        return Segmentation(labels, {1: self.classes[1], 2: self.classes[2]}, {}, {}, self.probabilities(volume))

    def probabilities(self, volume):
        shape = tuple(int(n) for n in np.asarray(volume.shape) // self.zoom)
        rng = np.random.default_rng(self.seed)
        g = np.indices(shape).astype(float)
        logits = np.stack([np.sin(g[0] / (3 + c) + rng.uniform(0, 6)) + np.cos(g[2] / (2 + c) + rng.uniform(0, 6))
                           for c in range(len(self.classes))]).astype(np.float32)
        p = np.exp(2 * logits)
        p /= p.sum(0, keepdims=True)
        return ClassProbabilities(p, scale_affine(volume.affine, self.zoom), self.classes)


def _members(*fakes):
    table = {f.name: f for f in fakes}
    return lambda name, threads=None: table[name]


@pytest.fixture
def scan():
    affine = np.diag([1.2, 1.2, 3.0, 1.0])   # finer than the fusion grid in-plane, coarser along the slices
    return Volume(np.zeros((40, 36, 10), np.int16), affine)


def test_fused_labels_are_the_weighted_average_of_the_members(scan):
    a, b = FakeMember("a", 1), FakeMember("b", 2, zoom=(4, 4, 2))
    eng = EnsembleEngine(members=(("a", 3.0), ("b", 1.0)), engines=_members(a, b))
    seg = eng.segment(scan, probabilities=True)
    shape, affine = eng.fusion_grid(scan)
    assert shape == (19, 17, 10)            # 40 x 1.2 mm / 2.5 mm, 36 x 1.2 / 2.5; 3 mm slices kept
    target = Volume(np.zeros(shape, np.int16), affine)
    fused = 0.75 * a.segment(scan, probabilities=True).probabilities.on_grid(target) \
        + 0.25 * b.segment(scan, probabilities=True).probabilities.on_grid(target)
    np.testing.assert_allclose(seg.probabilities.array, fused, atol=1e-6)
    small = largest_components(fused.argmax(0).astype(np.uint8), 3)
    idx = [np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(int), m - 1) for n, m in zip(scan.shape, shape)]
    np.testing.assert_array_equal(seg.labels.array, small[np.ix_(*idx)])
    for name, conf in seg.confidence.items():
        c = CLASSES.index(name)
        assert conf == pytest.approx(fused[c][small == c].mean(), rel=1e-5)
    assert set(seg.confidence) == {CLASSES[v] for v in np.unique(seg.labels.array) if v}


def test_linear_output_is_the_argmax_of_the_interpolated_fused_probabilities(scan):
    """linear_output: the labels are the argmax of the fused probabilities interpolated at every scan voxel,
    largest component per organ, inside the box of the fusion grid's organs (background outside it)."""
    a, b = FakeMember("a", 1), FakeMember("b", 2, zoom=(4, 4, 2))
    members = (("a", 1.0), ("b", 1.0))
    nearest = EnsembleEngine(members=members, engines=_members(a, b)).segment(scan, probabilities=True)
    linear = EnsembleEngine(members=members, engines=_members(a, b), linear_output=True).segment(scan)
    fine = nearest.probabilities.on_grid(scan)
    top2 = np.sort(fine, axis=0)[-2:]
    assert (top2[1] - top2[0] > 1e-5).all(), "the synthetic fields have no near-ties"
    expected = largest_components(fine.argmax(0).astype(np.uint8), 3)
    organs = np.nonzero(expected)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in organs)
    np.testing.assert_array_equal(linear.labels.array[box], expected[box])
    assert np.count_nonzero(linear.labels.array) == np.count_nonzero(expected)  # nothing outside the box
    assert (linear.labels.array != nearest.labels.array).any(), "smooth labels differ from the blocks"
    assert set(linear.confidence) == {CLASSES[v] for v in np.unique(linear.labels.array) if v}


def test_fuse_with_other_weights_equals_segment_with_them(scan):
    """fuse(): the members' probabilities computed once, fused with any weights, give what segment() gives with
    those weights (how out-of-fold weights are swept); with no weights, the ensemble's own."""
    a, b = FakeMember("a", 1), FakeMember("b", 2, zoom=(4, 4, 2))
    probs = [a.probabilities(scan), b.probabilities(scan)]
    equal = EnsembleEngine(members=(("a", 1.0), ("b", 1.0)), engines=_members(a, b))
    for weights in ((1.0, 1.0), (3.0, 1.0), (0.2, 0.8), (0.0, 1.0)):
        expected = EnsembleEngine(members=(("a", weights[0]), ("b", weights[1])),
                                  engines=_members(a, b)).segment(scan, probabilities=True)
        got = equal.fuse(scan, probs, weights, probabilities=True)
        np.testing.assert_array_equal(got.labels.array, expected.labels.array)
        np.testing.assert_allclose(got.probabilities.array, expected.probabilities.array, atol=1e-6)
        assert got.confidence == pytest.approx(expected.confidence, rel=1e-5)
    np.testing.assert_array_equal(equal.fuse(scan, probs).labels.array, equal.segment(scan).labels.array)
    with pytest.raises(ValueError):
        equal.fuse(scan, probs[:1])
    with pytest.raises(ValueError):
        equal.fuse(scan, probs, (-1.0, 2.0))


def test_a_member_with_weight_zero_does_not_count(scan):
    a, b = FakeMember("a", 1), FakeMember("b", 2)
    only_a = EnsembleEngine(members=(("a", 1.0), ("b", 0.0)), engines=_members(a, b)).segment(scan)
    alone = EnsembleEngine(members=(("a", 1.0),), engines=_members(a)).segment(scan)
    np.testing.assert_array_equal(only_a.labels.array, alone.labels.array)


class ProbabilityMember(FakeMember):
    """A member that offers class_probabilities (no label map), finishing after `delay` seconds."""

    def __init__(self, *args, delay=0.0, **kw):
        super().__init__(*args, **kw)
        self.delay, self.prob_calls = delay, 0

    def class_probabilities(self, volume, *, progress=None):
        import time

        time.sleep(self.delay)
        self.prob_calls += 1
        return self.probabilities(volume)


def test_members_run_side_by_side_and_are_summed_in_order(scan):
    """Members that finish in another order than they were given (the first sleeps longest) give the very same
    sums as members run one after another; class_probabilities is used where a member has it."""
    def members():
        return (ProbabilityMember("a", 1, delay=0.3), ProbabilityMember("b", 2, zoom=(4, 4, 2), delay=0.0),
                FakeMember("c", 3))

    runs = {}
    for concurrent in (1, 3):
        fakes = members()
        eng = EnsembleEngine(members=(("a", 1.0), ("b", 0.7), ("c", 0.3)), engines=_members(*fakes),
                             concurrent_members=concurrent, threads=3)
        assert eng.concurrent_members == (concurrent if kernels_run_concurrently() else 1)
        stages = []
        runs[concurrent] = eng.segment(scan, probabilities=True, progress=lambda s, f: stages.append(f))
        assert [f.prob_calls for f in fakes[:2]] == [1, 1] and fakes[0].calls == 0 and fakes[2].calls == 1
        assert stages[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in stages)
    np.testing.assert_array_equal(runs[1].probabilities.array, runs[3].probabilities.array)
    np.testing.assert_array_equal(runs[1].labels.array, runs[3].labels.array)


@pytest.mark.parametrize("name", ["sparse", "cnn3d", "cascade"])
def test_shipped_members_class_probabilities_are_those_of_segment(name):
    """What the ensemble fuses (class_probabilities, no label map) is what segment(probabilities=True) returns."""
    from organscope.engines.registry import get_engine
    from organscope.io import load_volume

    eng = get_engine(name, threads=1)
    vol = load_volume(SCAN)
    want = eng.segment(vol, probabilities=True).probabilities
    got = eng.class_probabilities(vol)
    assert got.classes == want.classes
    np.testing.assert_array_equal(got.affine, want.affine)
    np.testing.assert_array_equal(got.array, want.array)


def test_organ_subset_and_errors(scan):
    a, b = FakeMember("a", 1), FakeMember("b", 2)
    eng = EnsembleEngine(members=(("a", 1.0), ("b", 1.0)), engines=_members(a, b))
    assert set(np.unique(eng.segment(scan, organs=["brainstem"]).labels.array)) <= {0, 1}
    assert eng.body_region == "head-and-neck"
    with pytest.raises(ModelError, match="same classes"):
        EnsembleEngine(members=(("a", 1.0), ("c", 1.0)),
                       engines=_members(a, FakeMember("c", 3, classes=("background", "liver", "kidney"))))
    with pytest.raises(ModelError, match="no model of its own"):
        EnsembleEngine(model="sparse_openkbp", engines=_members(a))
    with pytest.raises(ModelError, match="weights"):
        EnsembleEngine(members=(("a", 0.0),), engines=_members(a))
    mixed = EnsembleEngine(members=(("a", 1.0), ("d", 1.0)), engines=_members(a, FakeMember("d", 4, region="chest")))
    assert mixed.body_region is None


def test_the_shipped_ensemble_on_the_bundled_scan(tmp_path, capsys):
    """End to end through the CLI with the shipped members, as the default engine (no --engine): the example
    scan's organs, with their statistics, each above the ensemble's own confidence threshold."""
    import json

    from organscope import cli
    from organscope.engines.ensemble import QC_MIN_CONFIDENCE

    out, stats = tmp_path / "labels.nii.gz", tmp_path / "stats.json"
    assert cli.main(["segment", "-i", str(SCAN), "-o", str(out), "--statistics", str(stats),
                     "--threads", "1", "--no-progress"]) == 0
    assert "7 organ(s) found" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "labels.json").read_text())
    assert sidecar["engine"] == "ensemble", sidecar
    assert min(sidecar["confidence"].values()) >= QC_MIN_CONFIDENCE
    text = stats.read_text()
    assert all(o in text for o in ("brainstem", "spinal_cord", "mandible", "parotid_left")), text
    assert json.loads(text)


def test_the_default_segmentation_engine_is_the_ensemble_and_point_queries_stay_with_sparse(tmp_path):
    """The ensemble is the default segmentation engine (best out of fold); a named model picks its card's engine;
    point queries, which only the sparse engine answers, default to it."""
    import json

    from organscope import api
    from organscope.engines.registry import DEFAULT_ENGINE, DEFAULT_QUERY_ENGINE, engine_of_model
    from organscope.modelcard import MODELS_DIR
    from organscope.pipeline import SegmentOptions

    assert DEFAULT_ENGINE == SegmentOptions().engine == "ensemble" and DEFAULT_QUERY_ENGINE == "sparse"
    assert SegmentOptions(model="cnn3d_openkbp").engine == "cnn3d"
    assert SegmentOptions(model=MODELS_DIR / "sparse_openkbp.onnx").engine == "sparse"
    assert SegmentOptions(model=MODELS_DIR / "cascade_openkbp.json").engine == "cascade"
    assert SegmentOptions(engine="cnn3d", model="cnn3d_openkbp").engine == "cnn3d"
    with pytest.raises(ModelError, match="not a segmentation engine"):
        engine_of_model("heatmap_openkbp")
    with pytest.raises(ModelError, match="no card"):
        engine_of_model(tmp_path / "missing.onnx")
    (tmp_path / "odd.json").write_text(json.dumps({"engine": "nonsense"}))
    with pytest.raises(ModelError, match="not a segmentation engine"):
        engine_of_model(tmp_path / "odd.json")
    # the model each engine runs when none is named (what `organscope models` lists as the ensemble's members)
    from organscope.engines.registry import default_model, engine_class

    for name in ("sparse", "cnn3d", "slice2d", "cascade"):
        assert engine_of_model(default_model(name)) == name and engine_class(name)
    with pytest.raises(ModelError, match="no model of its own"):
        default_model("ensemble")
    assert api.engine().name == "ensemble"
    res = api.query(SCAN, [[0.0, 0.0, 0.0]], voxel=True)  # no engine named: the sparse engine answers
    assert len(res.names) == 1 and res.names[0]


@pytest.mark.parametrize("orientation", ["flipped", "axes_permuted"])
def test_the_default_engine_gives_the_same_world_labels_on_a_reoriented_copy(orientation):
    """The default engine (the ensemble of the shipped members) on the bundled scan stored left-right flipped, or
    with its axes in another order (the affine saying so): the same organs at the same world places."""
    from organscope import api
    from organscope.io import load_volume

    vol = load_volume(SCAN)
    ref = api.segment(vol, threads=1)
    if orientation == "flipped":
        flip = np.diag([-1.0, 1, 1, 1])
        flip[0, 3] = vol.shape[0] - 1
        other = Volume(np.ascontiguousarray(vol.array[::-1]), vol.affine @ flip)
        back = lambda a: a[::-1]  # noqa: E731
    else:
        perm = np.zeros((4, 4))
        perm[2, 0] = perm[0, 1] = perm[1, 2] = perm[3, 3] = 1  # new voxel (a, b, c) is old voxel (b, c, a)
        other = Volume(np.ascontiguousarray(vol.array.transpose(2, 0, 1)), vol.affine @ perm)
        back = lambda a: a.transpose(1, 2, 0)  # noqa: E731
    seg = api.segment(other, threads=1)
    assert seg.present() == ref.present() and len(ref.present()) == 7
    labels, ref_labels = back(seg.labels.array), ref.labels.array
    for value, name in ref.names.items():
        a, b = labels == value, ref_labels == value
        if b.any():
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.999, name  # 1.0 here: every step is per voxel


def test_the_default_members_figures_are_those_measured_out_of_fold():
    """DEFAULT_MEMBERS, OUT_OF_FOLD_MEAN_DICE and QC_MIN_CONFIDENCE are what the out-of-fold runs in cv/ measured
    and chose (the weights every fold chose, their cross-fitted mean Dice, the threshold fitted for them)."""
    import json

    from organscope.engines.ensemble import DEFAULT_MEMBERS, OUT_OF_FOLD_MEAN_DICE, QC_MIN_CONFIDENCE

    cv = Path(__file__).resolve().parents[1] / "cv" / "ensemble_sparse_cnn3d_balanced"
    if not cv.exists():
        pytest.skip("no cv/ folder (an installed package without the repository)")
    sweep = json.loads((cv / "sweep_weights.json").read_text())
    threshold = json.loads((cv / "confidence_threshold.json").read_text())
    weights = ",".join(f"{w:g}" for _, w in DEFAULT_MEMBERS)
    assert sweep["members"] == [n for n, _ in DEFAULT_MEMBERS] == threshold["members"]
    assert set(sweep["cross_fitted"]["chosen_per_group"]) == {weights} and threshold["weights"] == weights
    assert round(sweep["cross_fitted"]["mean_dice"], 3) == OUT_OF_FOLD_MEAN_DICE
    assert threshold["threshold"] == QC_MIN_CONFIDENCE
