"""DICOM RT Structure Set (RTSTRUCT) in: ROIs of closed planar contours -> masks / a label map on a CT grid.

Contours are matched to the CT's slices by position: each contour's points are mapped into the CT's
voxel coordinates (i, j, k) through its affine, and the contour goes to slice round(k) when it lies
within half a slice of it (so float noise in the z coordinates does not matter; contours off the grid
are dropped). All the contours of one ROI on one slice are filled together with the even-odd rule,
pixel centres inside: a hole written as its own contour inside an outer one (the common convention,
and the one organscope writes) is a hole, an island inside a hole is filled again, and keyhole
contours (one outline cut in to the hole) come out right as well, since the cut has no width.

ROI names are mapped onto the organ catalogue through its TG-263 synonym table
(`organs.organ_from_roi_name`: "Spinal-Cord", "SpinalCord", "Lung L", "Oesophagus" ...); unknown ROIs
keep their own name in snake_case ("GTV-1" -> "gtv_1"). POINT / MARKER-type ROIs are skipped.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume

#: RT ROI Interpreted Types that are points, not volumes.
POINT_TYPES = frozenset({"MARKER", "ISOCENTER", "REGISTRATION", "POINT"})
#: A contour whose points spread over more than this many slices (in k) is not in a slice plane.
PLANAR_TOLERANCE_VOX = 0.25
#: Contours whose positions along the slice normal differ by less than this (in slices) are in one plane.
SAME_PLANE_VOX = 0.05


@dataclass(frozen=True)
class Roi:
    """One ROI of a structure set: its closed planar contours as (n, 3) arrays of LPS mm."""

    number: int
    roi_name: str  # as written in the file
    name: str  # catalogue name, or the ROI name in snake_case
    interpreted_type: str
    rgb: tuple[int, int, int] | None
    contours: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class StructureSet:
    path: str
    frame_of_reference_uids: tuple[str, ...]
    referenced_series_uids: tuple[str, ...]
    rois: tuple[Roi, ...]  # volumes only (POINT/MARKER ROIs and ROIs without closed contours left out)
    skipped: tuple[str, ...]  # ROI names left out, and why


def is_rtstruct(path: str | os.PathLike) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return False
    return str(ds.get("Modality", "")) == "RTSTRUCT"


def read_rtstruct(path: str | os.PathLike) -> StructureSet:
    """Parse an RTSTRUCT file; InputError if it is not one."""
    import pydicom

    from ..organs import organ_from_roi_name
    from .dicom import referenced_series_uids

    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, TypeError) as e:
        raise InputError(f"{path} is not a readable DICOM file ({type(e).__name__}).") from None
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise InputError(f"{path} is a DICOM {ds.get('Modality', 'file without modality')}, not an RT "
                         "Structure Set (RTSTRUCT).")
    names = {int(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}")
             for r in ds.get("StructureSetROISequence", [])}
    kinds = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").upper()
             for o in ds.get("RTROIObservationsSequence", [])}
    rois, skipped, used = [], [], set()
    for rc in ds.get("ROIContourSequence", []):
        number = int(rc.ReferencedROINumber)
        roi_name = names.get(number, f"ROI {number}")
        kind = kinds.get(number, "")
        if kind in POINT_TYPES:
            skipped.append(f"{roi_name} ({kind.lower()})")
            continue
        contours = []
        for c in rc.get("ContourSequence", []):
            if str(c.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            pts = np.asarray([float(v) for v in c.get("ContourData", [])], dtype=float)
            if pts.size >= 9 and pts.size % 3 == 0:
                contours.append(pts.reshape(-1, 3))
        if not contours:
            skipped.append(f"{roi_name} (no closed contour)")
            continue
        name = organ_from_roi_name(roi_name)
        base, n = name, 2
        while name in used:  # two ROIs with one catalogue name ("Lung L" and "Lung_L")
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        color = rc.get("ROIDisplayColor")
        rgb = tuple(int(float(v)) for v in color) if color is not None and len(color) == 3 else None
        rois.append(Roi(number, roi_name, name, kind, rgb, tuple(contours)))
    fors = tuple(str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
                 if "FrameOfReferenceUID" in f)
    return StructureSet(str(path), fors, tuple(sorted(referenced_series_uids(ds))), tuple(rois), tuple(skipped))


def select_rois(ss: StructureSet, wanted: list[str] | None) -> list[Roi]:
    """The ROIs named in `wanted` (file names or catalogue names, any spelling the synonym table knows)."""
    if wanted is None:
        return list(ss.rois)
    from ..organs import organ_from_roi_name

    out = []
    for w in wanted:
        key = organ_from_roi_name(w)
        hit = [r for r in ss.rois if r.name == key or r.roi_name == w or organ_from_roi_name(r.roi_name) == key]
        if not hit:
            have = ", ".join(f"{r.roi_name} ({r.name})" for r in ss.rois)
            raise InputError(f"{ss.path} has no ROI {w!r}; it holds {have}.")
        out += [r for r in hit if r not in out]
    return out


def contours_by_slice(roi: Roi, ct: Volume) -> dict[int, list[np.ndarray]]:
    """{slice k: [contour as (n, 2) voxel coordinates (i, j)]} of the ROI's contours that lie on `ct`'s slices.

    A contour goes to the nearest slice (so it is within half a slice of it). When contours from two
    different planes land on one slice (a structure set drawn on finer slices than this CT), only the
    plane nearest the slice centre is kept, so that they are not filled together even-odd."""
    from ._common import ras_to_lps

    inv = np.linalg.inv(ras_to_lps(ct.affine))
    nk = ct.shape[2]
    found: dict[int, list[tuple[float, np.ndarray]]] = {}
    off_grid = off_plane = 0
    for pts in roi.contours:
        vox = pts @ inv[:3, :3].T + inv[:3, 3]
        k = vox[:, 2]
        if np.ptp(k) > PLANAR_TOLERANCE_VOX:
            off_plane += 1
            continue
        kmean = float(k.mean())
        kc = int(np.floor(kmean + 0.5))
        if not 0 <= kc < nk:
            off_grid += 1
            continue
        found.setdefault(kc, []).append((kmean, vox[:, :2]))
    if off_plane:
        warnings.warn(f"ROI {roi.roi_name}: {off_plane} contour(s) not in the plane of the CT's slices were "
                      "left out.", stacklevel=2)
    if off_grid:
        warnings.warn(f"ROI {roi.roi_name}: {off_grid} contour(s) lie outside the CT's slices and were left out.",
                      stacklevel=2)
    out: dict[int, list[np.ndarray]] = {}
    for kc, items in found.items():
        items.sort(key=lambda t: t[0])
        planes: list[list[tuple[float, np.ndarray]]] = [[items[0]]]
        for item in items[1:]:  # one plane = positions within float noise of each other
            if item[0] - planes[-1][-1][0] > SAME_PLANE_VOX:
                planes.append([])
            planes[-1].append(item)
        best = min(planes, key=lambda pl: abs(np.mean([t[0] for t in pl]) - kc))
        out[kc] = [v for _, v in best]
    return out


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (ni, nj) mask of the pixel centres (i, j) inside `polygons` ((n, 2) arrays of (i, j)) by the
    even-odd rule over all of them together. Scanline: each row j meets the edges at sorted crossings x;
    centres with x[2m] <= i < x[2m+1] are inside (edges count half-open in j, so vertices count once)."""
    ni, nj = shape
    mask = np.zeros((nj, ni + 1), dtype=np.int32)
    x0s, y0s, x1s, y1s = [], [], [], []
    for p in polygons:
        p = np.asarray(p, dtype=float)
        q = np.roll(p, -1, axis=0)
        x0s.append(p[:, 0])
        y0s.append(p[:, 1])
        x1s.append(q[:, 0])
        y1s.append(q[:, 1])
    if not x0s:
        return np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = (np.concatenate(a) for a in (x0s, y0s, x1s, y1s))
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.ceil(ylo).astype(np.int64)  # rows j with ylo <= j < yhi
    last = np.ceil(yhi).astype(np.int64) - 1
    first = np.maximum(first, 0)
    last = np.minimum(last, nj - 1)
    count = np.maximum(last - first + 1, 0)
    if count.sum() == 0:
        return np.zeros(shape, dtype=bool)
    edge = np.repeat(np.arange(x0.size), count)
    start = np.repeat(np.cumsum(count) - count, count)
    rows = first[edge] + (np.arange(edge.size) - start)
    t = (rows - y0[edge]) / (y1[edge] - y0[edge])
    xs = x0[edge] + t * (x1[edge] - x0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # rows cut by the grid's edge keep all their crossings (only whole rows are dropped), so counts stay even
    if rows.size % 2:
        raise InputError("A contour is not closed; cannot fill it.")
    r = rows[0::2]
    if not np.array_equal(r, rows[1::2]):
        raise InputError("A contour is not closed; cannot fill it.")
    a = np.clip(np.ceil(xs[0::2]), 0, ni).astype(np.int64)
    b = np.clip(np.ceil(xs[1::2]), 0, ni).astype(np.int64)
    np.add.at(mask, (r, a), 1)
    np.add.at(mask, (r, b), -1)
    return (np.cumsum(mask, axis=1)[:, :ni] > 0).T


def roi_mask(roi: Roi, ct: Volume) -> np.ndarray:
    """Boolean mask of one ROI on `ct`'s grid."""
    mask = np.zeros(ct.shape, dtype=bool)
    for k, polys in contours_by_slice(roi, ct).items():
        mask[:, :, k] = fill_even_odd(polys, ct.shape[:2])
    return mask


def rtstruct_labels(path: str | os.PathLike, ct: Volume, *, rois: list[str] | None = None):
    """A Segmentation (label map on `ct`'s grid, value -> name) of an RTSTRUCT's ROIs.

    Values follow the file's ROI order. Where ROIs overlap, the smaller one is kept (it is painted last),
    so a tumour inside a lung stays visible; `roi_mask` gives each ROI whole.
    """
    from ..segmentation import Segmentation

    ss = read_rtstruct(path)
    ct_for = str(ct.meta.get("frame_of_reference_uid", "") or "")
    if ct_for and ss.frame_of_reference_uids and ct_for not in ss.frame_of_reference_uids:
        warnings.warn(f"{Path(path).name} is drawn in another frame of reference than the CT; its contours "
                      "are placed by their coordinates.", stacklevel=2)
    chosen = select_rois(ss, rois)
    if not chosen:
        raise InputError(f"{path} holds no ROI with closed contours (skipped: {', '.join(ss.skipped) or 'none'}).")
    masks = [(value, roi, roi_mask(roi, ct)) for value, roi in enumerate(chosen, start=1)]
    dtype = np.uint8 if len(masks) < 256 else np.uint16
    labels = np.zeros(ct.shape, dtype=dtype)
    for value, _, m in sorted(masks, key=lambda t: -int(t[2].sum())):
        labels[m] = value
    names = {value: roi.name for value, roi, _ in masks}
    return Segmentation(ct.with_array(labels), names, {})
