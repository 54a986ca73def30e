"""Per-organ statistics of a label map on its CT: volume (ml), mean and sd of HU, centroid (world RAS mm).

Volume = voxel count x voxel volume, the voxel volume being |det| of the affine's 3x3 part (mm^3), so
anisotropic, flipped and oblique grids are all measured right. The sd is the population sd (ddof=0) of
the organ's voxel values. The centroid is the mean voxel index mapped through the affine.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..segmentation import Segmentation
from ..errors import InputError
from ..volume import Volume
from ._common import check_same_grid


@dataclass(frozen=True)
class OrganStatistics:
    label: int
    name: str
    voxels: int
    volume_ml: float
    mean_hu: float
    sd_hu: float
    centroid_mm: tuple[float, float, float]  # world RAS mm
    confidence: float | None = None  # mean probability of the engine's pick over the organ's voxels
    cut_off: bool = False  # touches the scan's border: the volume is not the whole organ
    status: str | None = None  # the anatomy check: verified / unverified (kept); None when not checked


def voxel_volume_mm3(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def organ_statistics(ct: Volume, seg: Segmentation) -> list[OrganStatistics]:
    """Statistics of every organ present in `seg` (a label map on `ct`'s grid), by label value."""
    check_same_grid(seg.labels, ct)
    labels = np.asarray(seg.labels.array).ravel(order="F")
    flat = np.flatnonzero(labels)  # organs are small: work on labelled voxels only
    lab = labels[flat].astype(np.int64)
    hu = np.asarray(ct.array).ravel(order="F")[flat].astype(np.float64)
    n = np.bincount(lab)
    present = np.flatnonzero(n)
    if present.size == 0:
        return []
    mean = np.bincount(lab, weights=hu) / np.maximum(n, 1)
    var = np.bincount(lab, weights=(hu - mean[lab]) ** 2) / np.maximum(n, 1)  # two-pass: no cancellation
    ijk = np.unravel_index(flat, ct.shape, order="F")
    centre = np.stack([np.bincount(lab, weights=ix.astype(np.float64)) for ix in ijk], axis=1) / np.maximum(n, 1)[:, None]
    world = ct.voxel_to_world(centre[present])
    vox_ml = voxel_volume_mm3(ct.affine) / 1000.0
    border = np.zeros(len(n), dtype=bool)  # label values on any face of the grid
    arr = np.asarray(seg.labels.array)
    for a in range(3):
        for end in (0, -1):
            vals = np.unique(np.take(arr, end, axis=a))
            border[vals[vals < len(n)].astype(np.int64)] = True
    qc = getattr(seg, "qc", None)
    out = []
    for row, v in enumerate(present):
        name = seg.names.get(int(v))
        if name is None:
            raise InputError(f"Label value {int(v)} in the label map has no organ name.")
        conf = seg.confidence.get(str(name))
        out.append(OrganStatistics(int(v), str(name), int(n[v]), float(n[v] * vox_ml), float(mean[v]),
                                   float(np.sqrt(var[v])), tuple(float(c) for c in world[row]),
                                   None if conf is None else round(float(conf), 4), bool(border[v]),
                                   None if qc is None or name not in qc.organs else qc.organs[name].status))
    return out


def statistics_document(ct: Volume, seg: Segmentation) -> dict:
    """The JSON document written by `write_statistics`."""
    stats = organ_statistics(ct, seg)
    return {
        "source": ct.meta.get("source"),
        "shape": list(ct.shape),
        "spacing_mm": [round(float(s), 6) for s in ct.spacing_mm],
        "voxel_volume_mm3": voxel_volume_mm3(ct.affine),
        "units": {"volume_ml": "ml", "mean_hu": "HU", "sd_hu": "HU (population sd)",
                  "centroid_mm": "world RAS mm", "confidence": "mean probability (0-1)",
                  "cut_off": "touches the scan's border: the volume is not the whole organ"},
        "organs": [asdict(s) | {"centroid_mm": list(s.centroid_mm)} for s in stats],
    } | ({} if getattr(seg, "qc", None) is None else {"qc": seg.qc.to_dict()})


def write_statistics(ct: Volume, seg: Segmentation, path: str | os.PathLike) -> dict:
    """Atomically write the per-organ statistics as JSON; returns the document."""
    from ..io import write_text_atomic
    from ..io._common import wrap_write_error

    doc = statistics_document(ct, seg)
    try:
        write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise wrap_write_error(e, path) from None
    return doc
