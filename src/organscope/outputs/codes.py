"""Coded terms (SNOMED CT) of the catalogue's organs, for DICOM-SEG segment descriptions.

The table is data: organ name -> (keyword of pydicom's SNOMED CT code dictionary, laterality). Keywords,
not bare numbers, so that every code is looked up in (and checked against) pydicom's copy of the DICOM
code tables; laterality becomes a "Left"/"Right" modifier of the property type, as dcmqi and
TotalSegmentator's DICOM-SEG mapping do. Organs without an entry get the generic "Anatomical Structure".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# name -> (pydicom SCT keyword, laterality "L"/"R"/"")
_SIDED = {
    "kidney": "Kidney", "adrenal_gland": "AdrenalGland", "parotid": "ParotidGland",
    "common_carotid_artery": "CommonCarotidArtery", "brachiocephalic_vein": "BrachiocephalicVein",
    "iliac_artery": "CommonIliacArtery", "iliac_vena": "CommonIliacVein", "humerus": "Humerus",
    "scapula": "Scapula", "clavicula": "Clavicle", "femur": "Femur", "autochthon": "ErectorSpinaeMuscle",
}
_PLAIN = {
    "spleen": "Spleen", "gallbladder": "Gallbladder", "liver": "Liver", "stomach": "Stomach",
    "pancreas": "Pancreas", "esophagus": "Esophagus", "trachea": "Trachea", "thyroid_gland": "Thyroid",
    "small_bowel": "SmallIntestine", "duodenum": "Duodenum", "colon": "Colon", "urinary_bladder": "Bladder",
    "prostate": "Prostate", "sacrum": "Sacrum", "heart": "Heart", "aorta": "Aorta",
    "pulmonary_vein": "PulmonaryVein", "brachiocephalic_trunk": "BrachiocephalicTrunk",
    "subclavian_artery_right": "RightSubclavianArtery", "subclavian_artery_left": "LeftSubclavianArtery",
    "superior_vena_cava": "SuperiorVenaCava", "inferior_vena_cava": "InferiorVenaCava",
    "spinal_cord": "SpinalCord", "brain": "Brain", "skull": "Skull", "sternum": "Sternum",
    "costal_cartilages": "CostalCartilage", "brainstem": "BrainStem", "larynx": "Larynx",
    "mandible": "Mandible", "lung_middle_lobe_right": "MiddleLobeOfRightLung",
}
_LUNG = {"lung_upper_lobe_left": ("UpperLobeOfLung", "L"), "lung_lower_lobe_left": ("LowerLobeOfLung", "L"),
         "lung_upper_lobe_right": ("UpperLobeOfLung", "R"), "lung_lower_lobe_right": ("LowerLobeOfLung", "R")}

SNOMED_TABLE: dict[str, tuple[str, str]] = {
    **{n: (k, "") for n, k in _PLAIN.items()},
    **{f"{n}_{side}": (k, side[0].upper()) for n, k in _SIDED.items() for side in ("left", "right")},
    **{f"rib_{side}_{i}": ("Rib", side[0].upper()) for side in ("left", "right") for i in range(1, 13)},
    **{f"vertebrae_{r.lower()}{i}": (f"{r}{i}Vertebra", "") for r, n in (("C", 7), ("T", 12), ("L", 5))
       for i in range(1, n + 1)},
    **_LUNG,
}


@dataclass(frozen=True)
class OrganCode:
    """Segmented property category and type (pydicom Codes) and the laterality modifier, if any."""

    category: object
    type: object
    modifier: object | None
    generic: bool  # True when the organ has no specific code and "Anatomical Structure" stands in


def organ_code(name: str) -> OrganCode:
    """The coded terms of an organ (catalogue name or alias); a generic code for organs not in the table."""
    from pydicom.sr.codedict import codes

    from ..organs import normalize_name

    key = normalize_name(name)
    key = re.sub(r"^vertebrae_([ctl])(\d+)$", lambda m: f"vertebrae_{m[1]}{m[2]}", key)
    category = codes.cid7150.AnatomicalStructure
    entry = SNOMED_TABLE.get(key)
    if entry is None:
        return OrganCode(category, codes.SCT.AnatomicalStructure, None, True)
    keyword, side = entry
    modifier = {"L": codes.SCT.Left, "R": codes.SCT.Right}.get(side)
    return OrganCode(category, getattr(codes.SCT, keyword), modifier, False)
