"""Anatomical priors (organscope.postprocess.priors) on hand-made label maps whose answers are known,
on RAS, LPS, PLI and oblique grids holding the same world positions, and the measurement tool on a tiny
made-up dataset."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import synthetic as syn
from organscope.segmentation import Segmentation
from organscope.errors import InputError, ModelError
from organscope.organs import OPENKBP
from organscope.postprocess import Rule, RuleSet, apply_priors, apply_priors_array, evaluate_rules, load_rules
from organscope.postprocess.priors import (
    ANCHOR_ABSENT, APPLIED, ORGAN_ABSENT, rules_excess_mm, rules_from_dict, save_rules,
)
from organscope.volume import Volume

SHAPE = (20, 20, 20)
SPACING = (2.0, 2.0, 3.0)  # x, y, z mm on the RAS grid
ORGAN, ANCHOR, OTHER = 1, 2, 3
NAMES = {ORGAN: "brainstem", ANCHOR: "spinal_cord", OTHER: "mandible"}
ORIENTATIONS = {  # array axis a runs along RAS axis perm[a], reversed if flips[a]
    "RAS": ((0, 1, 2), (0, 0, 0)),
    "LPS": ((0, 1, 2), (1, 1, 0)),
    "PLI": ((1, 0, 2), (1, 1, 1)),
    "SIA": ((2, 0, 1), (0, 1, 0)),
}


def ras_affine():
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = (-100.0, 40.0, -250.0)
    return aff


def anchor_block(lab):
    lab[8:12, 8:12, 8:12] = ANCHOR  # indices 8..11 on every RAS axis


def line(lab, axis, label=ORGAN, at=2):
    """A line of `label` along RAS `axis` through t = 0..19, at index `at` on the other axes."""
    idx = [at, at, at]
    for t in range(SHAPE[axis]):
        idx[axis] = t
        lab[tuple(idx)] = label


def kept_positions(lab, axis, at=2):
    idx = [at, at, at]
    out = []
    for t in range(SHAPE[axis]):
        idx[axis] = t
        if lab[tuple(idx)] == ORGAN:
            out.append(t)
    return out


def oriented(lab_ras, name):
    perm, flips = ORIENTATIONS[name]
    aff, _ = syn.reoriented(ras_affine(), SHAPE, perm, flips)
    return syn.reorient_array(lab_ras, perm, flips), aff


def back_to_ras(arr, name):
    perm, flips = ORIENTATIONS[name]
    for a, flip in enumerate(flips):
        if flip:
            arr = np.flip(arr, axis=a)
    return np.ascontiguousarray(np.transpose(arr, np.argsort(perm)))


def rule(relation, reference, margin_mm, organ="brainstem", anchor="spinal_cord", rid="r"):
    return Rule(rid, organ, anchor, relation, reference, margin_mm)


def run_on(lab_ras, rules, orientation, names=NAMES):
    arr, aff = oriented(lab_ras, orientation)
    return back_to_ras(apply_priors_array(arr, aff, names, rules), orientation)


# --- each relation, checked in world space on every orientation ---------------------------------------

# (relation, reference, margin_mm, RAS axis of the relation, positions t of the organ's line that survive).
# The anchor spans t = 8..11; z spacing is 3 mm, y and x spacing 2 mm.
AXIAL_CASES = [
    ("superior_of", "max", 4.0, 2, range(10, 20)),     # z >= 33 - 4 mm  -> t >= 9.67
    ("superior_of", "min", 0.0, 2, range(8, 20)),      # z >= 24 mm
    ("superior_of", "centre", -3.0, 2, range(11, 20)),  # z >= 28.5 + 3 mm -> t >= 10.5
    ("inferior_of", "min", 4.0, 2, range(0, 10)),      # z <= 24 + 4 mm  -> t <= 9.33
    ("inferior_of", "max", 0.0, 2, range(0, 12)),
    ("anterior_of", "max", 3.0, 1, range(10, 20)),     # y >= 22 - 3 mm  -> t >= 9.5
    ("posterior_of", "centre", 0.0, 1, range(0, 10)),  # y <= 19 mm      -> t <= 9.5
    ("posterior_of", "min", 2.0, 1, range(0, 10)),     # y <= 16 + 2 mm  -> t <= 9
    ("medial_to", "max", 2.0, 0, range(7, 13)),        # |x - 19| <= 3 + 2 mm -> |t - 9.5| <= 2.5
    ("medial_to", "centre", 4.0, 0, range(8, 12)),     # |x - 19| <= 4 mm     -> |t - 9.5| <= 2
]


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("relation,reference,margin,axis,kept", AXIAL_CASES)
def test_relation_keeps_exactly_the_voxels_on_the_right_side(relation, reference, margin, axis, kept, orientation):
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    line(lab, axis)
    out = run_on(lab, [rule(relation, reference, margin)], orientation)
    assert kept_positions(out, axis) == list(kept)
    assert np.count_nonzero(out == ANCHOR) == 64  # the anchor is never touched
    removed = (lab == ORGAN) & (out == 0)
    assert np.array_equal(out[~removed], lab[~removed])  # only organ voxels change, to background


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_superior_is_world_up_not_array_up(orientation):
    """A stray brainstem blob below the spinal cord's top is removed, one above it is kept, whatever the
    array's axis order: in LPS/PLI the array's last axis may run feet-wards."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[9:11, 9:11, 0:16] = ANCHOR  # cord: z index 0..15
    lab[9:11, 9:11, 16:20] = ORGAN  # brainstem on top of it
    lab[2, 2, 3] = ORGAN            # stray, far below the cord's top
    lab[2, 2, 18] = ORGAN           # stray, above: kept
    out = run_on(lab, [rule("superior_of", "max", 10.0)], orientation)
    assert out[2, 2, 3] == 0 and out[2, 2, 18] == ORGAN
    assert np.count_nonzero(out == ORGAN) == 17


def test_oblique_affine_uses_world_coordinates():
    """On a grid tilted 30 degrees about x, "superior" mixes j and k; the kept voxels are those whose
    world z is high enough."""
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(SPACING)
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    lab[2, :, :] = ORGAN  # a whole sagittal plane of organ voxels
    out = apply_priors_array(lab, aff, NAMES, [rule("superior_of", "max", 0.0)])
    ii, jj, kk = np.indices(SHAPE)
    z = (np.stack([ii, jj, kk], -1) @ aff[:3, :3].T)[..., 2]
    top = z[lab == ANCHOR].max()
    expect = (lab == ORGAN) & (z >= top)
    assert np.array_equal(out == ORGAN, expect)
    assert 0 < expect.sum() < (lab == ORGAN).sum()


# --- the side rule ------------------------------------------------------------------------------------

def _parotid_map(main_on_high_x: bool, label: int):
    """Mandible (anchor) at x index 8..11; a parotid whose main part is a block on one side and a stray
    line across the whole x range."""
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    lab[lab == ANCHOR] = 7
    xs = slice(14, 18) if main_on_high_x else slice(2, 6)
    lab[xs, 14:18, 14:18] = label
    for t in range(SHAPE[0]):
        lab[t, 2, 2] = label
    return lab


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("main_on_high_x", [True, False])
@pytest.mark.parametrize("organ", ["parotid_left", "parotid_right"])
def test_side_rule_follows_the_main_part_not_the_name(organ, main_on_high_x, orientation):
    """Whichever name the parotid has and whichever side (world +x or -x) it lies on, its voxels beyond
    the mandible's mid-sagittal plane from its main part are removed: no left/right convention is used."""
    label = OPENKBP.ids[organ]
    lab = _parotid_map(main_on_high_x, label)
    side_rule = Rule("side", organ, "mandible", "lateral_of", "centre", 0.0)
    out = run_on(lab, [side_rule], orientation, names=dict(OPENKBP.names))
    kept = [t for t in range(SHAPE[0]) if out[t, 2, 2] == label]
    assert kept == (list(range(10, 20)) if main_on_high_x else list(range(0, 10)))  # mid-plane at t = 9.5
    assert np.count_nonzero(out[:, 14:18, 14:18] == label) == 64  # main part untouched


def test_side_rule_gives_the_same_voxels_when_left_and_right_names_are_swapped():
    lab = _parotid_map(True, 3)          # label 3: main part at high x, stray line across
    lab[2:6, 14:18, 14:18] = 4           # label 4: main part at low x ...
    lab[15, 6:10, 2] = 4                 # ... and a stray on label 3's side
    rules = [Rule(f"{o}_side", o, "mandible", "lateral_of", "centre", 0.0) for o in ("parotid_right", "parotid_left")]
    as_given = apply_priors_array(lab, ras_affine(), dict(OPENKBP.names), rules)
    swapped = dict(OPENKBP.names) | {3: "parotid_left", 4: "parotid_right"}
    assert np.array_equal(as_given, apply_priors_array(lab, ras_affine(), swapped, rules))
    assert np.all(as_given[15, 6:10, 2] == 0)
    assert [t for t in range(SHAPE[0]) if as_given[t, 2, 2] == 3] == list(range(10, 20))
    assert np.count_nonzero(lab != as_given) == 14


def test_lateral_of_outer_edge():
    lab = _parotid_map(True, ORGAN)
    lab[lab == 7] = ANCHOR
    out = apply_priors_array(lab, ras_affine(), NAMES, [rule("lateral_of", "max", 0.0)])
    assert [t for t in range(SHAPE[0]) if out[t, 2, 2] == ORGAN] == list(range(11, 20))  # x - 19 >= 3 mm


# --- skipping, anchors, combination -------------------------------------------------------------------

def test_absent_anchor_or_organ_skips_the_rule():
    lab = np.zeros(SHAPE, np.uint8)
    line(lab, 2)
    r = rule("superior_of", "max", 0.0)
    assert np.array_equal(apply_priors_array(lab, ras_affine(), NAMES, [r]), lab)
    assert evaluate_rules(lab, ras_affine(), NAMES, [r])["r"].status == ANCHOR_ABSENT
    anchor_block(lab)
    unnamed = {ORGAN: "brainstem"}  # the anchor's label has no name: treated as absent
    assert np.array_equal(apply_priors_array(lab, ras_affine(), unnamed, [r]), lab)
    assert evaluate_rules(lab, ras_affine(), NAMES, [r])["r"].status == APPLIED
    lab[lab == ORGAN] = 0
    assert evaluate_rules(lab, ras_affine(), NAMES, [r])["r"].status == ORGAN_ABSENT


def test_anchor_box_from_largest_component_ignores_a_stray_anchor_voxel():
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    lab[18, 18, 19] = ANCHOR  # a stray anchor voxel at the very top
    line(lab, 2)
    r = [rule("superior_of", "max", 0.0)]
    largest = apply_priors_array(lab, ras_affine(), NAMES, RuleSet(tuple(r)))
    every = apply_priors_array(lab, ras_affine(), NAMES, RuleSet(tuple(r), anchor_part="all"))
    assert kept_positions(largest, 2) == list(range(11, 20))
    assert kept_positions(every, 2) == [19]


def test_rules_are_evaluated_on_the_input_so_order_does_not_matter():
    """Rule b's anchor is rule a's organ: b sees the anchor as given (bottom at t = 0), not as trimmed by a
    (bottom at t = 11, which would have kept the mandible)."""
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    line(lab, 2)
    lab[5, 5, 5:8] = OTHER  # mandible
    a = rule("superior_of", "max", 0.0, rid="a")                                       # brainstem: t >= 11
    b = rule("inferior_of", "min", 0.0, organ="mandible", anchor="brainstem", rid="b")  # mandible: z <= 0
    ab = apply_priors_array(lab, ras_affine(), NAMES, [a, b])
    ba = apply_priors_array(lab, ras_affine(), NAMES, [b, a])
    assert np.array_equal(ab, ba)
    assert kept_positions(ab, 2) == list(range(11, 20)) and np.count_nonzero(ab == OTHER) == 0
    only_b_after_a = apply_priors_array(apply_priors_array(lab, ras_affine(), NAMES, [a]), ras_affine(), NAMES, [b])
    assert np.count_nonzero(only_b_after_a == OTHER) == 3  # what a sequential application would give


def test_segmentation_and_volume_in_and_out():
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    line(lab, 2)
    vol = Volume(lab, ras_affine())
    rules = [rule("superior_of", "max", 0.0)]
    seg = Segmentation(vol, dict(NAMES), {"segment": 1.0})
    out = apply_priors(seg, rules=rules)
    assert isinstance(out, Segmentation) and out.names == NAMES
    assert set(out.timings_s) == {"segment", "priors"}
    assert np.array_equal(out.labels.affine, vol.affine)
    assert kept_positions(out.labels.array, 2) == list(range(11, 20))
    assert np.array_equal(lab, vol.array)  # input untouched
    vout = apply_priors(vol, NAMES, rules)
    assert isinstance(vout, Volume) and np.array_equal(vout.array, out.labels.array)
    with pytest.raises(InputError, match="names"):
        apply_priors(vol, None, rules)
    with pytest.raises(InputError, match="Segmentation or a labels Volume"):
        apply_priors(lab, NAMES, rules)


def test_engine_selection_applies_only_the_rules_measured_to_help():
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    line(lab, 2)
    rs = RuleSet((rule("superior_of", "max", 0.0, rid="up"), rule("inferior_of", "min", 0.0, rid="down")))
    with pytest.raises(ModelError, match="measure_priors"):
        apply_priors_array(lab, ras_affine(), NAMES, rs.for_engine("sparse"))
    rs = rs.with_selection("sparse", ["down"], {"dice_delta": {"down": 0.01, "up": -0.02}})
    out = apply_priors(Volume(lab, ras_affine()), NAMES, rs, engine="sparse")
    assert kept_positions(out.array, 2) == list(range(0, 9))
    assert rs.meta["measurements"]["sparse"]["dice_delta"]["up"] == -0.02


def test_rule_excess_is_the_margin_at_which_nothing_is_removed():
    lab = np.zeros(SHAPE, np.uint8)
    anchor_block(lab)
    line(lab, 2)
    r = rule("superior_of", "max", 0.0)
    skipped = rule("superior_of", "max", 0.0, anchor="larynx", rid="skipped")
    found = rules_excess_mm(lab, ras_affine(), NAMES, [r, skipped])
    assert math.isnan(found["skipped"])
    excess = found["r"]
    assert excess == pytest.approx(33.0)  # the line's bottom (z = 0) lies 11 slices x 3 mm below the top
    for margin, changed in ((excess, False), (excess - 0.1, True)):
        out = apply_priors_array(lab, ras_affine(), NAMES, [rule("superior_of", "max", margin)])
        assert (not np.array_equal(out, lab)) == changed


# --- the rules file -----------------------------------------------------------------------------------

def test_packaged_headneck_rules_are_valid():
    rs = load_rules("headneck")
    organs = set(OPENKBP.names.values())
    assert {r.organ for r in rs.rules} == organs  # a rule for every OpenKBP organ
    assert all(r.anchor in organs and r.anchor != r.organ for r in rs.rules)
    assert any(r.relation == "lateral_of" and r.reference == "centre" for r in rs.rules)  # the side rule
    for engine, ids in rs.enabled_for.items():
        assert set(ids) <= {r.id for r in rs.rules}
        rs.for_engine(engine)
    assert "sparse" in rs.enabled_for  # measured (organscope.training.measure_priors)


def test_rules_file_round_trip(tmp_path):
    rs = load_rules("headneck").with_selection("x", ["cord_medial_to_brainstem"], {"cases": 3})
    save_rules(rs, tmp_path / "r.json")
    again = load_rules(tmp_path / "r.json")
    assert again == rs and again.meta["measurements"]["x"] == {"cases": 3}
    assert json.loads((tmp_path / "r.json").read_text())["version"] == 1


@pytest.mark.parametrize("change,message", [
    ({"relation": "beside"}, "relation"),
    ({"reference": "middle"}, "reference"),
    ({"relation": "medial_to", "reference": "min"}, "medial_to"),
    ({"margin_mm": "wide"}, "margin_mm"),
    ({"anchor": "brainstem"}, "itself"),
])
def test_bad_rules_are_refused_with_a_reason(change, message):
    good = {"id": "r", "organ": "brainstem", "anchor": "spinal_cord", "relation": "superior_of",
            "reference": "max", "margin_mm": 5}
    rules_from_dict({"rules": [good]})
    with pytest.raises(InputError, match=message):
        rules_from_dict({"rules": [{**good, **change}]})
    with pytest.raises(InputError, match="unique"):
        rules_from_dict({"rules": [good, good]})
    with pytest.raises(InputError, match="does not define"):
        rules_from_dict({"rules": [good], "enabled_for": {"sparse": ["nope"]}})


# --- the measurement tool -----------------------------------------------------------------------------

def _tiny_dataset(root, refs, split, nib):
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    cases = []
    for n, ref in enumerate(refs):
        cid = f"case_{n}"
        cases.append({"case": cid, "split": split, "organs": sorted({OPENKBP.names[int(v)] for v in np.unique(ref) if v})})
        nib.save(nib.Nifti1Image(np.full(SHAPE, -1000, np.int16), ras_affine()), root / "images" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(ref, ras_affine()), root / "labels" / f"{cid}.nii.gz")
    labels = {"background": 0, **{v: k for k, v in OPENKBP.names.items()}}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "cases": cases}))


def test_measure_priors_selects_the_rule_that_helps(tmp_path):
    """Two validation cases; the prediction has a stray brainstem blob far below the cord (a rule removing
    it raises Dice) and the rule "cord medial to brainstem" with a negative margin cuts true cord."""
    nib = pytest.importorskip("nibabel")
    from organscope.training.measure_priors import main

    root, pred_dir = tmp_path / "ds", tmp_path / "pred"
    pred_dir.mkdir()
    refs = []
    for n in range(2):
        ref = np.zeros(SHAPE, np.uint8)
        ref[9:11, 9:11, 0:14] = 2   # spinal cord
        ref[8:12, 8:12, 14:19] = 1  # brainstem above it
        pred = ref.copy()
        pred[2:4, 2:4, 2 + n:4 + n] = 1  # stray brainstem blob, far below the cord's top
        nib.save(nib.Nifti1Image(pred, ras_affine()), pred_dir / f"case_{n}.nii.gz")
        refs.append(ref)
    _tiny_dataset(root, refs, "validation", nib)
    rules = {"rules": [
        {"id": "helps", "organ": "brainstem", "anchor": "spinal_cord", "relation": "superior_of",
         "reference": "max", "margin_mm": 10},
        {"id": "hurts", "organ": "spinal_cord", "anchor": "brainstem", "relation": "medial_to",
         "reference": "centre", "margin_mm": -0.5},
        {"id": "idle", "organ": "larynx", "anchor": "spinal_cord", "relation": "anterior_of",
         "reference": "max", "margin_mm": 0},
    ], "enabled_for": {"cnn3d": ["hurts"]}}
    rules_path = tmp_path / "rules.json"
    rules_path.write_text(json.dumps(rules))
    out = tmp_path / "figures.json"
    assert main(["--engine", "sparse", "--data", str(root), "--pred-dir", str(pred_dir),
                 "--rules", str(rules_path), "--out", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["selected"] == ["helps"]
    assert fig["rules"]["helps"]["dice_delta"] > 0 and fig["rules"]["helps"]["better"] == 2
    assert fig["rules"]["hurts"]["dice_delta"] < 0 and fig["rules"]["idle"]["fired"] == 0
    v = fig["variants"]
    assert v["selected"]["organs"]["brainstem"]["dice"] == pytest.approx(1.0)
    assert v["none"]["organs"]["brainstem"]["dice"] < 1.0 and v["all"]["organs"]["spinal_cord"]["dice"] < 1.0
    saved = load_rules(rules_path)
    assert saved.enabled_for == {"cnn3d": ("hurts",), "sparse": ("helps",)}
    assert saved.meta["measurements"]["sparse"]["cases"] == 2


def test_fit_margins_from_reference_contours(tmp_path):
    """Brainstem bottoms 1, 2 and 10 slices (3 mm each) below the cord's top: the largest (30 mm) is left out,
    6 mm + 10 mm slack rounds up to 20 mm. The parotids' mirrored rules pool their cases into one margin."""
    nib = pytest.importorskip("nibabel")
    from organscope.training.measure_priors import main

    refs = []
    for below, parotid, z in ((1, 3, 2), (2, 4, 3), (10, 3, 4)):
        ref = np.zeros(SHAPE, np.uint8)
        ref[9:11, 9:11, 0:14] = 2
        ref[12:16, 12:16, 13 - below:19] = 1  # beside the cord, bottom `below` slices under its top (13)
        ref[2:5, 2:5, 4:8] = 7                # mandible: bottom at z index 4
        ref[15:18, 2:5, z:z + 4] = parotid    # a parotid whose bottom is 2, 1 or 0 slices below the mandible's
        refs.append(ref)
    _tiny_dataset(tmp_path / "ds", refs, "train", nib)
    rules = {"rules": [
        {"id": "bs_up", "organ": "brainstem", "anchor": "spinal_cord", "relation": "superior_of", "reference": "max",
         "margin_mm": 0},
        {"id": "parotid_right_up", "organ": "parotid_right", "anchor": "mandible", "relation": "superior_of",
         "reference": "min", "margin_mm": 0},
        {"id": "parotid_left_up", "organ": "parotid_left", "anchor": "mandible", "relation": "superior_of",
         "reference": "min", "margin_mm": 0},
        {"id": "never", "organ": "larynx", "anchor": "mandible", "relation": "superior_of", "reference": "min",
         "margin_mm": 7},
    ], "enabled_for": {"sparse": ["bs_up"]}}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    assert main(["--data", str(tmp_path / "ds"), "--fit-margins-on", "train", "--rules", str(path)]) == 0
    fitted = load_rules(path)
    # parotid excesses pooled: 6 and 0 mm (right), 3 mm (left) -> second largest 3 + 10 -> 15
    assert [r.margin_mm for r in fitted.rules] == [20.0, 15.0, 15.0, 7.0]
    assert fitted.enabled_for == {} and "train" in fitted.meta["margin_basis"]
