"""Small helpers shared by the output writers."""
from __future__ import annotations

import colorsys
import zlib

import numpy as np

from ..errors import InputError
from ..volume import Volume


def check_same_grid(labels: Volume, ct: Volume) -> None:
    """InputError unless the label map lies on the scan's grid (same shape and affine)."""
    if labels.shape != ct.shape or not np.allclose(labels.affine, ct.affine, atol=1e-4):
        raise InputError(f"The label map (shape {labels.shape}) is not on the scan's grid (shape {ct.shape}); "
                         "segment the scan itself, or resample the labels onto it first.")


def organ_display(name: str) -> tuple[str, tuple[int, int, int]]:
    """(name for people, RGB 0-255) of an organ: from the catalogue, else a stable colour from the name."""
    from ..organs import get_organ, is_organ

    if is_organ(name):
        organ = get_organ(name)
        return organ.display_name, tuple(int(c) for c in organ.rgb)
    hue = (zlib.crc32(name.encode()) % 1000) / 1000.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.6, 0.9)
    return name.replace("_", " ").capitalize(), (round(r * 255), round(g * 255), round(b * 255))


def present_named_labels(seg, what: str) -> list[int]:
    """The label values present in `seg` (all named), or InputError: nothing to write as `what`, or unnamed values."""
    import numpy as np

    labels = np.asarray(seg.labels.array)
    present = [int(v) for v in np.unique(labels) if v > 0]
    if not present:
        raise InputError(f"No organ was found in the scan, so there is nothing to write as {what}.")
    unnamed = [v for v in present if v not in seg.names]
    if unnamed:
        raise InputError(f"Label value(s) {unnamed} in the label map have no organ name.")
    return present
