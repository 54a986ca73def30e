import json
import re
from pathlib import Path

import numpy as np
import pytest

from organscope import organs as o
from organscope.errors import InputError

LABELS_JSON = Path("/work/shared/data/totalsegmentator-example/labels.json")


def test_every_label_map_name_is_in_the_catalogue():
    for lm in o.LABEL_MAPS.values():
        for name in lm.names.values():
            assert name in o.ORGANS


def test_catalogue_entries_are_well_formed():
    for name, organ in o.ORGANS.items():
        assert organ.name == name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert organ.region in o.REGIONS
        assert len(organ.rgb) == 3 and all(0 <= c <= 255 for c in organ.rgb)
        assert organ.display_name
    assert o.get_organ("kidney_left").display_name == "Left kidney"
    assert o.get_organ("vertebrae_L1").display_name == "Vertebra L1"


def test_label_map_sizes():
    assert len(o.OPENKBP) == 7 and len(o.TOTALSEGMENTATOR) == 117
    assert len(o.BTCV) == 13 and len(o.AMOS) == 15 and len(o.FLARE22) == 13
    assert o.OPENKBP.names[3] == "parotid_right" and o.OPENKBP.ids["mandible"] == 7
    assert o.AMOS.names[15] == "prostate_or_uterus" and o.FLARE22.names[13] == "kidney_left"
    assert o.BTCV.names[10] == "portal_vein_and_splenic_vein"


@pytest.mark.skipif(not LABELS_JSON.exists(), reason="shared data not available")
def test_totalsegmentator_map_matches_labels_json():
    ref = json.loads(LABELS_JSON.read_text())
    assert {int(k): v.lower() for k, v in ref.items()} == dict(o.TOTALSEGMENTATOR.names)
    assert {int(k): v for k, v in ref.items()} == dict(o.TOTALSEGMENTATOR.source_names)


@pytest.mark.parametrize("alias, name", [
    ("parotid_gland_left", "parotid_left"), ("Esophagus", "esophagus"), ("Right Kidney", "kidney_right"),
    ("left-adrenal gland", "adrenal_gland_left"), ("adrenal_right", "adrenal_gland_right"),
    ("Inferior Vena Cava (IVC)", "inferior_vena_cava"), ("postcava", "inferior_vena_cava"),
    ("arota", "aorta"), ("bladder", "urinary_bladder"), ("prostate/uterus", "prostate_or_uterus"),
    ("Gall Bladder", "gallbladder"), ("vertebrae_S1", "vertebrae_s1"), ("thyroid", "thyroid_gland"),
    ("KIDNEY LEFT", "kidney_left"), ("spinal-cord", "spinal_cord"),
])
def test_aliases(alias, name):
    assert o.get_organ(alias).name == name
    assert o.normalize_name(alias) == name
    assert o.is_organ(alias)


def test_unknown_organ_is_a_clear_error():
    with pytest.raises(o.UnknownOrganError, match="Did you mean kidney_left"):
        o.get_organ("kidny_left")
    with pytest.raises(InputError):
        o.get_organ("tail")
    with pytest.raises(KeyError):
        o.get_organ("tail")
    assert o.normalize_name("My Tumour") == "my_tumour"  # never raises
    assert not o.is_organ("My Tumour")


def test_remap_between_datasets():
    lut = o.BTCV.remap_to(o.AMOS)
    labels = np.array([0, 1, 2, 10, 11, 13])
    assert lut[labels].tolist() == [0, 1, 2, 0, 10, 12]  # portal vein is not in AMOS -> background
    lut = o.FLARE22.remap_to(o.TOTALSEGMENTATOR, missing=-1)
    assert lut[[0, 1, 13]].tolist() == [0, 5, 3]
    assert o.OPENKBP.remap_to(o.BTCV, missing=-1)[1] == -1


def test_label_map_from_dataset_json_both_forms():
    a = o.label_map_from_dataset_json({"labels": {"background": 0, "Liver": 1, "right kidney": 2}})
    b = o.label_map_from_dataset_json({"0": "background", "1": "liver", "2": "kidney_right"})
    assert a == b and dict(a.names) == {1: "liver", 2: "kidney_right"}
    assert a.id_of("Kidney Right") == 2 and "liver" in a
    custom = o.label_map_from_dataset_json({"labels": {"background": 0, "My Tumour": 1}})
    assert custom.names[1] == "my_tumour"
    with pytest.raises(InputError):
        o.label_map_from_dataset_json({"labels": {"My Tumour": 1}}, strict=True)
    with pytest.raises(InputError, match="two labels"):
        o.LabelMap("x", {1: "liver", 2: "Liver"})
    with pytest.raises(InputError):
        o.label_map_from_dataset_json({"labels": {"liver": "one"}})


def test_lateral_twin_swaps_only_the_side_suffix():
    from organscope.organs import lateral_twin

    assert lateral_twin("parotid_right") == "parotid_left" and lateral_twin("kidney_left") == "kidney_right"
    assert lateral_twin("lung_upper_lobe_left") == "lung_upper_lobe_right"
    assert lateral_twin("brainstem") == "brainstem" and lateral_twin("left_atrium") == "left_atrium"
