"""The one organ catalogue: stable organ names and every dataset's label numbers mapped onto them.

Names are lower-case snake_case in the TotalSegmentator style (`kidney_left`, `vertebrae_l1`).
Dataset label maps (`OPENKBP`, `TOTALSEGMENTATOR`, `BTCV`, `AMOS`, `FLARE22`) translate a dataset's
integers to these names; label 0 is always background and is never listed in a map.
"""
from __future__ import annotations

import colorsys
import difflib
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

from .errors import InputError

REGIONS = ("head_neck", "thorax", "abdomen", "pelvis", "musculoskeletal", "other")


@dataclass(frozen=True)
class Organ:
    """One entry of the catalogue."""

    name: str  # canonical snake_case name, e.g. "kidney_left"
    display_name: str  # for people, e.g. "Left kidney"
    rgb: tuple[int, int, int]  # viewer colour, 0-255
    region: str  # one of REGIONS


class UnknownOrganError(InputError, KeyError):
    """An organ name that is neither a catalogue name nor a known alias."""

    __str__ = Exception.__str__


# --- dataset label maps, as published -------------------------------------------------------------

# TotalSegmentator v2, task "total" (117 classes), copied from its class map (names exactly as there).
_TOTALSEG_V2_TOTAL = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right", 13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right", 15: "esophagus", 16: "trachea", 17: "thyroid_gland", 18: "small_bowel",
    19: "duodenum", 20: "colon", 21: "urinary_bladder", 22: "prostate", 23: "kidney_cyst_left",
    24: "kidney_cyst_right", 25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4",
    29: "vertebrae_L3", 30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11",
    34: "vertebrae_T10", 35: "vertebrae_T9", 36: "vertebrae_T8", 37: "vertebrae_T7", 38: "vertebrae_T6",
    39: "vertebrae_T5", 40: "vertebrae_T4", 41: "vertebrae_T3", 42: "vertebrae_T2", 43: "vertebrae_T1",
    44: "vertebrae_C7", 45: "vertebrae_C6", 46: "vertebrae_C5", 47: "vertebrae_C4", 48: "vertebrae_C3",
    49: "vertebrae_C2", 50: "vertebrae_C1", 51: "heart", 52: "aorta", 53: "pulmonary_vein",
    54: "brachiocephalic_trunk", 55: "subclavian_artery_right", 56: "subclavian_artery_left",
    57: "common_carotid_artery_right", 58: "common_carotid_artery_left", 59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right", 61: "atrial_appendage_left", 62: "superior_vena_cava",
    63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left",
    66: "iliac_artery_right", 67: "iliac_vena_left", 68: "iliac_vena_right", 69: "humerus_left",
    70: "humerus_right", 71: "scapula_left", 72: "scapula_right", 73: "clavicula_left", 74: "clavicula_right",
    75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right", 79: "spinal_cord",
    80: "gluteus_maximus_left", 81: "gluteus_maximus_right", 82: "gluteus_medius_left",
    83: "gluteus_medius_right", 84: "gluteus_minimus_left", 85: "gluteus_minimus_right",
    86: "autochthon_left", 87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right", 90: "brain",
    91: "skull", 92: "rib_left_1", 93: "rib_left_2", 94: "rib_left_3", 95: "rib_left_4", 96: "rib_left_5",
    97: "rib_left_6", 98: "rib_left_7", 99: "rib_left_8", 100: "rib_left_9", 101: "rib_left_10",
    102: "rib_left_11", 103: "rib_left_12", 104: "rib_right_1", 105: "rib_right_2", 106: "rib_right_3",
    107: "rib_right_4", 108: "rib_right_5", 109: "rib_right_6", 110: "rib_right_7", 111: "rib_right_8",
    112: "rib_right_9", 113: "rib_right_10", 114: "rib_right_11", 115: "rib_right_12", 116: "sternum",
    117: "costal_cartilages",
}
# OpenKBP head-and-neck organs at risk (as converted in shared/data/openkbp).
_OPENKBP = {1: "brainstem", 2: "spinal_cord", 3: "parotid_right", 4: "parotid_left", 5: "esophagus",
            6: "larynx", 7: "mandible"}
# BTCV (Synapse multi-atlas abdomen), 13 organs.
_BTCV = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver",
         7: "stomach", 8: "aorta", 9: "inferior_vena_cava", 10: "portal_vein_and_splenic_vein",
         11: "pancreas", 12: "adrenal_gland_right", 13: "adrenal_gland_left"}
# AMOS22 (its dataset.json: ... 8 "arota", 9 "postcava", 14 "bladder", 15 "prostate/uterus").
_AMOS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver",
         7: "stomach", 8: "aorta", 9: "inferior_vena_cava", 10: "pancreas", 11: "adrenal_gland_right",
         12: "adrenal_gland_left", 13: "duodenum", 14: "urinary_bladder", 15: "prostate_or_uterus"}
# FLARE22, 13 organs.
_FLARE22 = {1: "liver", 2: "kidney_right", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior_vena_cava",
            7: "adrenal_gland_right", 8: "adrenal_gland_left", 9: "gallbladder", 10: "esophagus",
            11: "stomach", 12: "duodenum", 13: "kidney_left"}

# Whole lungs, as radiotherapy structure sets contour them (no dataset above labels them).
_RADIOTHERAPY = {1: "lung_left", 2: "lung_right"}

# --- the catalogue --------------------------------------------------------------------------------

_REGION_MEMBERS = {
    "head_neck": "brain skull brainstem parotid_right parotid_left larynx mandible thyroid_gland "
                 "common_carotid_artery_right common_carotid_artery_left",
    "thorax": "lung_left lung_right lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right "
              "lung_lower_lobe_right esophagus trachea heart aorta pulmonary_vein brachiocephalic_trunk "
              "subclavian_artery_right subclavian_artery_left brachiocephalic_vein_left "
              "brachiocephalic_vein_right atrial_appendage_left superior_vena_cava",
    "abdomen": "spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right "
               "adrenal_gland_left small_bowel duodenum colon kidney_cyst_left kidney_cyst_right "
               "inferior_vena_cava portal_vein_and_splenic_vein",
    "pelvis": "urinary_bladder prostate prostate_or_uterus iliac_artery_left iliac_artery_right "
              "iliac_vena_left iliac_vena_right",
    "other": "spinal_cord",
}
_MUSCULOSKELETAL = re.compile(
    r"^(vertebrae_[ctls]\d+|sacrum|rib_(left|right)_\d+|sternum|costal_cartilages|"
    r"(humerus|scapula|clavicula|femur|hip|autochthon|iliopsoas|gluteus_(maximus|medius|minimus))_(left|right))$"
)

# Hand-picked viewer colours for the common organs; the rest get a deterministic palette colour.
_RGB = {
    "spleen": (157, 108, 162), "kidney_right": (185, 102, 83), "kidney_left": (185, 102, 83),
    "gallbladder": (139, 150, 98), "liver": (221, 130, 101), "stomach": (216, 132, 105),
    "pancreas": (249, 180, 111), "adrenal_gland_right": (244, 214, 49), "adrenal_gland_left": (244, 214, 49),
    "esophagus": (211, 171, 143), "trachea": (182, 228, 255), "thyroid_gland": (220, 245, 20),
    "small_bowel": (205, 167, 142), "duodenum": (255, 253, 229), "colon": (204, 168, 143),
    "urinary_bladder": (222, 154, 132), "prostate": (230, 158, 140), "prostate_or_uterus": (230, 158, 140),
    "heart": (206, 110, 84), "aorta": (224, 97, 76), "inferior_vena_cava": (0, 151, 206),
    "superior_vena_cava": (0, 151, 206), "portal_vein_and_splenic_vein": (0, 112, 165),
    "brain": (250, 250, 225), "skull": (241, 213, 144), "spinal_cord": (244, 214, 49),
    "brainstem": (230, 200, 120), "parotid_right": (255, 145, 200), "parotid_left": (200, 145, 255),
    "larynx": (120, 200, 220), "mandible": (255, 240, 200),
    "lung_upper_lobe_left": (172, 138, 115), "lung_lower_lobe_left": (202, 164, 140),
    "lung_upper_lobe_right": (172, 138, 115), "lung_middle_lobe_right": (224, 186, 162),
    "lung_lower_lobe_right": (202, 164, 140), "lung_left": (64, 64, 255), "lung_right": (64, 160, 255),
}

_ALIASES = {
    "oesophagus": "esophagus", "gall_bladder": "gallbladder", "bladder": "urinary_bladder",
    "arota": "aorta", "postcava": "inferior_vena_cava", "ivc": "inferior_vena_cava",
    "brain_stem": "brainstem", "spinalcord": "spinal_cord", "prostate_uterus": "prostate_or_uterus",
    "small_intestine": "small_bowel", "portal_and_splenic_vein": "portal_vein_and_splenic_vein",
    "portal_vein_splenic_vein": "portal_vein_and_splenic_vein", "iliac_vein_left": "iliac_vena_left",
    "iliac_vein_right": "iliac_vena_right", "kidney_cyst_l": "kidney_cyst_left",
}


def _region_of(name: str) -> str:
    for region, members in _REGION_MEMBERS.items():
        if name in members.split():
            return region
    if _MUSCULOSKELETAL.match(name):
        return "musculoskeletal"
    raise AssertionError(f"organ {name!r} has no region in organs.py")


def _display_name(name: str) -> str:
    words = name.split("_")
    side = [w for w in words if w in ("left", "right")]
    words = [w for w in words if w not in ("left", "right")]
    words = [w.upper() if re.fullmatch(r"[ctls]\d+", w) else w for w in words]
    if words[0] == "vertebrae":
        words[0] = "vertebra"
    text = " ".join(side[:1] + words)
    return text[0].upper() + text[1:]


def _palette(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.55, 0.9)
    return (round(r * 255), round(g * 255), round(b * 255))


def _build_catalogue() -> Mapping[str, Organ]:
    order: list[str] = []
    for table in (_TOTALSEG_V2_TOTAL, _OPENKBP, _BTCV, _AMOS, _FLARE22, _RADIOTHERAPY):
        for raw in table.values():
            name = raw.lower()
            if name not in order:
                order.append(name)
    organs = {n: Organ(n, _display_name(n), _RGB.get(n, _palette(i)), _region_of(n)) for i, n in enumerate(order)}
    return MappingProxyType(organs)


ORGANS: Mapping[str, Organ] = _build_catalogue()
_DEGLANDED = {n.replace("_gland", ""): n for n in ORGANS}


def normalize_name(name: str) -> str:
    """Canonical catalogue name for `name` if it is an organ or a known alias, else its normal form.

    Normal form: lower case, text in parentheses dropped, runs of other characters -> "_", a leading
    "left"/"right" moved to the end ("Right Kidney" -> "kidney_right"). Never raises.
    """
    s = re.sub(r"\(.*?\)", " ", str(name)).strip().lower()
    s = re.sub(r"[^0-9a-z]+", "_", s).strip("_")
    words = s.split("_")
    if len(words) > 1 and words[0] in ("left", "right"):
        s = "_".join(words[1:] + words[:1])
    return _lookup(s) or s


def _lookup(s: str) -> str | None:
    if s in ORGANS:
        return s
    if s in _ALIASES:
        return _ALIASES[s]
    s2 = re.sub(r"^vertebra_", "vertebrae_", s).replace("_gland", "")
    return _DEGLANDED.get(s2) or _ALIASES.get(s2)


def get_organ(name: str) -> Organ:
    """The catalogue entry for a name or alias (case-insensitive; spaces and hyphens as underscores)."""
    key = normalize_name(name)
    if key in ORGANS:
        return ORGANS[key]
    close = difflib.get_close_matches(key, list(ORGANS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " See organscope.organs.ORGANS for the names."
    raise UnknownOrganError(f"Unknown organ name {name!r}.{hint}")


def is_organ(name: str) -> bool:
    """True if `name` is a catalogue name or a known alias."""
    return normalize_name(name) in ORGANS


# --- radiotherapy names (AAPM TG-263) ------------------------------------------------------------

#: Catalogue name -> TG-263 primary name (AAPM Task Group 263, "Standardizing nomenclatures in radiation
#: oncology", 2018). Organs without an entry get `tg263_name`'s derived name (Title_Case, _L/_R).
TG263 = MappingProxyType({
    "brainstem": "Brainstem", "spinal_cord": "SpinalCord", "parotid_left": "Parotid_L",
    "parotid_right": "Parotid_R", "esophagus": "Esophagus", "larynx": "Larynx", "mandible": "Bone_Mandible",
    "lung_left": "Lung_L", "lung_right": "Lung_R", "heart": "Heart", "liver": "Liver", "spleen": "Spleen",
    "stomach": "Stomach", "pancreas": "Pancreas", "kidney_left": "Kidney_L", "kidney_right": "Kidney_R",
    "gallbladder": "Gallbladder", "duodenum": "Duodenum", "small_bowel": "Bowel_Small", "colon": "Colon",
    "urinary_bladder": "Bladder", "prostate": "Prostate", "trachea": "Trachea", "thyroid_gland": "Glnd_Thyroid",
    "adrenal_gland_left": "Glnd_Adrenal_L", "adrenal_gland_right": "Glnd_Adrenal_R", "aorta": "A_Aorta",
    "inferior_vena_cava": "V_Venacava_I", "superior_vena_cava": "V_Venacava_S", "brain": "Brain",
    "common_carotid_artery_left": "A_Carotid_L", "common_carotid_artery_right": "A_Carotid_R",
    "femur_left": "Femur_L", "femur_right": "Femur_R", "sternum": "Sternum", "body": "External",
})
#: Radiotherapy target volumes keep their upper-case TG-263 stem ("gtv_1" -> "GTV_1").
_TARGET_WORDS = ("gtv", "ctv", "itv", "ptv", "gtvp", "gtvn", "ctvp", "ctvn")
#: Other spellings planning systems and clinics use (keys: lower case, separators and sides removed;
#: the side, if any, is read separately from a leading/trailing L/Lt/Left/R/Rt/Right word).
_RT_SYNONYMS = {
    "cord": "spinal_cord", "spinalcanal": "spinal_cord", "oesophagus": "esophagus", "esoph": "esophagus",
    "brainstem": "brainstem", "mandible": "mandible", "jaw": "mandible", "lung": "lung", "lungs": "lungs",
    "parotidgland": "parotid", "thyroid": "thyroid_gland", "bladder": "urinary_bladder",
    "body": "body", "external": "body", "patient": "body", "outline": "body", "skin": "body",
    "bodycontour": "body", "externalcontour": "body",
}
_SIDE_WORDS = {"l": "left", "lt": "left", "left": "left", "r": "right", "rt": "right", "right": "right"}


def lateral_twin(name: str) -> str:
    """The organ on the other side of the body (`parotid_right` <-> `parotid_left`); a midline organ's own name."""
    for side, other in (("_right", "_left"), ("_left", "_right")):
        if name.endswith(side):
            return name[: -len(side)] + other
    return name


def tg263_name(name: str) -> str:
    """The TG-263 name of an organ (catalogue name or alias), or for organs TG-263 does not list here a
    derived name in its style: Title_Case words, side as _L/_R ("iliopsoas_left" -> "Iliopsoas_L")."""
    key = normalize_name(name)
    if key in TG263:
        return TG263[key]
    words = key.split("_")
    side = {"left": "L", "right": "R"}.get(words[-1]) if len(words) > 1 else None
    if side:
        words = words[:-1]
    words = [w.upper() if re.fullmatch(r"[ctls]\d+", w) or w in _TARGET_WORDS else w.capitalize() for w in words]
    return "_".join(words + ([side] if side else []))


def rt_interpreted_type(name: str) -> str:
    """RT ROI Interpreted Type of a structure: ORGAN for catalogue organs, EXTERNAL for the body outline,
    GTV/CTV/PTV for target volumes, else empty (unknown)."""
    key = normalize_name(name)
    if key in ORGANS:
        return "ORGAN"
    if key == "body":
        return "EXTERNAL"
    first = key.split("_")[0]
    return first[:3].upper() if first in _TARGET_WORDS else ""


def _roi_words(text: str) -> list[str]:
    text = re.sub(r"\(.*?\)", " ", str(text))
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # SpinalCord -> Spinal Cord
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def _split_side(words: list[str]) -> tuple[list[str], str | None]:
    if len(words) > 1 and words[-1] in _SIDE_WORDS:
        return words[:-1], _SIDE_WORDS[words[-1]]
    if len(words) > 1 and words[0] in _SIDE_WORDS:
        return words[1:], _SIDE_WORDS[words[0]]
    return words, None


def _build_rt_bases() -> dict[str, str]:
    """Separator-free key (side removed) -> catalogue base name, from catalogue names, TG-263 names and
    the aliases, so that "Spinal cord", "SpinalCord", "Spinal-Cord" and "spinal_cord" meet."""
    bases: dict[str, str] = {}
    for name in ORGANS:
        words, side = _split_side(name.split("_"))
        bases.setdefault("".join(words), "_".join(words))
    for name, tg in TG263.items():
        words, _ = _split_side(_roi_words(tg))
        base, _ = _split_side(name.split("_"))
        bases.setdefault("".join(words), "_".join(base))
    for alias, name in _ALIASES.items():
        bases.setdefault(alias.replace("_", ""), name)
    bases.update(_RT_SYNONYMS)
    return bases


_RT_BASES = _build_rt_bases()


def organ_from_roi_name(roi_name: str) -> str:
    """Catalogue name of a structure-set ROI name ("Spinal cord", "SpinalCord", "Lung L", "Lung-Left",
    "Oesophagus", TG-263 names ...; case and separators do not matter), else the ROI's own name in
    snake_case ("GTV-1" -> "gtv_1"); "External"/"BODY"/"Patient" give "body"."""
    words, side = _split_side(_roi_words(roi_name))
    base = _RT_BASES.get("".join(words))
    if base is not None:
        name = f"{base}_{side}" if side else base
        if name in ORGANS or name == "body":
            return name
    name = normalize_name(roi_name)
    return name or "roi"


class LabelMap:
    """Integer labels of one dataset <-> catalogue names. Label 0 is background and is never listed.

    `names` maps int -> canonical name, `ids` name -> int, `source_names` int -> the dataset's own
    spelling. With `strict=False`, names outside the catalogue are kept in their normal form.
    """

    def __init__(self, dataset: str, names: Mapping[int, str], *, strict: bool = True):
        canon: dict[int, str] = {}
        for label, raw in sorted((int(k), v) for k, v in names.items()):
            if label <= 0:
                raise InputError(f"Label map {dataset!r}: organ {raw!r} has label {label}; organ labels must be >= 1.")
            name = get_organ(raw).name if strict else normalize_name(raw)
            if name in canon.values():
                raise InputError(f"Label map {dataset!r}: organ {name!r} appears under two labels.")
            canon[label] = name
        self.dataset = dataset
        self.names: Mapping[int, str] = MappingProxyType(canon)
        self.ids: Mapping[str, int] = MappingProxyType({n: i for i, n in canon.items()})
        self.source_names: Mapping[int, str] = MappingProxyType({int(k): str(v) for k, v in names.items()})

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self.ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and dict(self.names) == dict(other.names)

    def __hash__(self) -> int:
        return hash(tuple(self.names.items()))

    def __repr__(self) -> str:
        return f"LabelMap({self.dataset!r}, {len(self)} organs)"

    @property
    def max_id(self) -> int:
        return max(self.names, default=0)

    def id_of(self, name: str) -> int:
        """Label of an organ given by name or alias; UnknownOrganError if this map lacks it."""
        key = normalize_name(name)
        if key not in self.ids:
            raise UnknownOrganError(f"Organ {name!r} has no label in the {self.dataset} label map.")
        return self.ids[key]

    def subset(self, names: Iterable[str]) -> "LabelMap":
        """The same numbering restricted to some organs."""
        keep = {self.id_of(n) for n in names}
        return LabelMap(self.dataset, {i: n for i, n in self.names.items() if i in keep}, strict=False)

    def remap_to(self, other: "LabelMap", *, missing: int = 0) -> np.ndarray:
        """Lookup table from this numbering to `other`'s: `other_labels = lut[labels]`.

        Organs that `other` lacks get `missing` (background by default); 0 stays 0.
        """
        lut = np.full(self.max_id + 1, missing, dtype=np.int32 if missing < 0 else np.uint16)
        lut[0] = 0
        for label, name in self.names.items():
            lut[label] = other.ids.get(name, missing)
        return lut


def label_map_from_dataset_json(d: Mapping, *, dataset: str = "dataset.json", strict: bool = False) -> LabelMap:
    """A LabelMap from a dataset.json "labels" dict (name -> int, or MSD-style int -> name).

    Accepts the whole dataset.json too (its "labels" entry is used). Background (0) is dropped.
    """
    labels = d.get("labels", d) if isinstance(d, Mapping) else d
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(f"{dataset}: expected a non-empty 'labels' object mapping organ names to integers.")
    pairs: dict[int, str] = {}
    for k, v in labels.items():
        try:
            if isinstance(v, (int, float)) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
                label, name = int(v), str(k)
            else:
                label, name = int(k), str(v)
        except (TypeError, ValueError):
            raise InputError(f"{dataset}: label entry {k!r}: {v!r} is not a name with an integer label.") from None
        if label != 0:
            pairs[label] = name
    return LabelMap(dataset, pairs, strict=strict)


OPENKBP = LabelMap("openkbp", _OPENKBP)
TOTALSEGMENTATOR = LabelMap("totalsegmentator", _TOTALSEG_V2_TOTAL)
BTCV = LabelMap("btcv", _BTCV)
AMOS = LabelMap("amos", _AMOS)
FLARE22 = LabelMap("flare22", _FLARE22)
LABEL_MAPS: Mapping[str, LabelMap] = MappingProxyType(
    {"openkbp": OPENKBP, "totalsegmentator": TOTALSEGMENTATOR, "btcv": BTCV, "amos": AMOS, "flare22": FLARE22}
)
