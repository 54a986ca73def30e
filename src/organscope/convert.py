"""`organscope convert`: radiotherapy / DICOM objects <-> label maps on a CT series' grid.

    RTSTRUCT or DICOM-SEG (.dcm) + its CT series  ->  label map (.nii.gz/.nii/.nrrd) + names sidecar
    label map + the DICOM CT series it lies on     ->  RTSTRUCT (.dcm)

The CT series is `--ct DIR` (`--series-uid` picks one of several), else the folder of the input .dcm
(a clinic export: the CT the RTSTRUCT refers to is found there).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


@dataclass(frozen=True)
class ConvertedRoi:
    value: int
    name: str
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]  # RAS


def dicom_kind(path: str | os.PathLike) -> str | None:
    """'RTSTRUCT', 'SEG' or another modality for a DICOM file; None if it is not one."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return None
    return str(ds.get("Modality", "") or "") or None


def reference_ct(reference: str | os.PathLike, ct: str | os.PathLike | None = None, *,
                 series_uid: str | None = None, option: str = "--ct"):
    """The CT Volume of an RTSTRUCT/DICOM-SEG: `ct` (a DICOM folder), else the series in the file's folder
    that it refers to (an RTSTRUCT names its series; a DICOM-SEG's folder must hold one CT series)."""
    from .io import load_volume

    if ct is not None:
        return load_volume(ct, series_uid=series_uid)
    ref = Path(reference)
    try:
        return load_volume(ref if dicom_kind(ref) == "RTSTRUCT" else ref.parent, series_uid=series_uid)
    except InputError as e:
        raise InputError(f"Could not find the CT series of {ref.name} in its folder ({_lower(str(e))[:-1]}); "
                         f"give the CT series folder with {option}.") from None


def labels_from_dicom(reference: str | os.PathLike, ct, *, rois: list[str] | None = None):
    """Segmentation on `ct`'s grid from an RTSTRUCT or DICOM-SEG file; names mapped into the catalogue."""
    kind = dicom_kind(reference)
    if kind == "RTSTRUCT":
        from .io.rtstruct import rtstruct_labels

        return rtstruct_labels(reference, ct, rois=rois)
    if kind == "SEG":
        from .segmentation import Segmentation
        from .organs import organ_from_roi_name
        from .outputs.dicom_seg import read_dicom_seg

        seg = read_dicom_seg(reference, ct)
        names = {v: organ_from_roi_name(n) for v, n in seg.names.items()}
        if rois is not None:
            wanted = {organ_from_roi_name(r) for r in rois}
            missing = wanted - set(names.values())
            if missing:
                raise InputError(f"{reference} has no segment {', '.join(sorted(missing))}; it holds "
                                 f"{', '.join(names.values())}.")
            keep = [v for v, n in names.items() if n in wanted]
            arr = seg.labels.array
            seg = Segmentation(seg.labels.with_array(np.where(np.isin(arr, keep), arr, 0).astype(arr.dtype)),
                               {v: names[v] for v in keep}, {})
            return seg
        return Segmentation(seg.labels, names, {})
    what = "not a DICOM file" if kind is None else f"a DICOM {kind} object"
    raise InputError(f"{reference} is {what}; give an RTSTRUCT or a DICOM-SEG.")


def roi_summary(seg) -> list[ConvertedRoi]:
    """Voxels, volume (ml) and centroid (RAS mm) of each label of a Segmentation."""
    from scipy import ndimage

    arr = np.asarray(seg.labels.array)
    affine = seg.labels.affine
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    values = sorted(seg.names)
    counts = np.bincount(arr.ravel(), minlength=max(values, default=0) + 1)
    centres = ndimage.center_of_mass(np.ones(arr.shape, np.uint8), arr, values) if values else []
    out = []
    for v, c in zip(values, centres):
        n = int(counts[v])
        mm = tuple(float(x) for x in (affine[:3, :3] @ np.asarray(c) + affine[:3, 3])) if n else (np.nan,) * 3
        out.append(ConvertedRoi(v, seg.names[v], n, n * voxel_ml, mm))
    return out


def run_convert(input: str | os.PathLike, output: str | os.PathLike, *, ct: str | os.PathLike | None = None,
                series_uid: str | None = None, rois: list[str] | None = None) -> int:
    """`organscope convert INPUT -o OUTPUT [--ct DIR] [--series-uid UID] [--rois a,b]`: an RTSTRUCT or DICOM-SEG
    (with its CT series) -> label map, or a label map + CT series -> RTSTRUCT."""
    src, out = Path(input), Path(output)
    if not src.exists():
        raise InputError(f"{src} does not exist; check the path.")
    if src.resolve() == out.resolve():
        raise InputError(f"The output {out} is the input; choose another output name.")
    out_lower = out.name.lower()
    if src.is_file() and src.name.lower().endswith(LABEL_SUFFIXES):
        return _labels_to_rtstruct(src, out, ct=ct, series_uid=series_uid, rois=rois)
    if not out_lower.endswith(LABEL_SUFFIXES):
        raise InputError(f"Converting {src.name} writes a label map: name the output .nii.gz, .nii or .nrrd, "
                         f"not {out.name}.")
    ct_vol = reference_ct(src, ct, series_uid=series_uid)
    seg = labels_from_dicom(src, ct_vol, rois=rois)
    from .io import save_labels

    save_labels(ct_vol, seg.labels, out, seg.names)
    for r in roi_summary(seg):
        c = ", ".join(f"{v:.1f}" for v in r.centroid_mm)
        print(f"{r.name:<20} label {r.value:>3}  {r.voxels:>9} voxels  {r.volume_ml:9.2f} ml  centroid ({c}) mm RAS")
    print(f"{out}: {len(seg.names)} structure(s) from {src.name} on the CT {ct_vol.meta.get('source')}",
          file=sys.stderr)
    return 0


def _labels_to_rtstruct(src: Path, out: Path, *, ct, series_uid: str | None, rois: list[str] | None) -> int:
    from .io import load_labels, load_volume
    from .segmentation import Segmentation
    from .organs import organ_from_roi_name
    from .outputs.rtstruct import write_rtstruct

    if not out.name.lower().endswith(".dcm"):
        raise InputError(f"Converting the label map {src.name} writes an RTSTRUCT: name the output .dcm, "
                         f"not {out.name}.")
    if ct is None:
        raise InputError(f"Converting the label map {src.name} to an RTSTRUCT needs its DICOM CT series: give "
                         "the series folder with --ct.")
    ct = load_volume(ct, series_uid=series_uid)
    labels = load_labels(src)
    names = labels.meta.get("label_names")
    if not names:
        raise InputError(f"The label map {src.name} has no names sidecar ({src.name.split('.')[0]}.json with "
                         "{\"labels\": {name: value}}), so its ROIs cannot be named.")
    arr = np.asarray(labels.array)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.rint(arr).astype(np.int32)
    names = {int(v): n for v, n in names.items() if int(v) > 0}
    if rois is not None:
        wanted = {organ_from_roi_name(r) for r in rois}
        keep = [v for v, n in names.items() if organ_from_roi_name(n) in wanted]
        if len(keep) < len(wanted):
            raise InputError(f"The label map {src.name} lacks some of {', '.join(rois)}; it holds "
                             f"{', '.join(names.values())}.")
        arr = np.where(np.isin(arr, keep), arr, 0)
        names = {v: names[v] for v in keep}
    seg = Segmentation(labels.with_array(arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)),
                       names, {})
    n = write_rtstruct(seg, ct, out, engine="convert", description=f"organscope convert {src.name}"[:64])
    print(f"{out}: {n} ROI(s) from {src.name} on the CT {ct.meta.get('source')}", file=sys.stderr)
    return 0


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def evaluate_dicom_reference(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, *,
                             reference_series: str | os.PathLike | None = None, out_prefix=None,
                             tolerance_mm: float = 2.0, organs: list[str] | None = None) -> int:
    """`organscope evaluate PRED REF.dcm [--reference-series DIR]`: score label map(s) (a file, or a folder of
    X.nii.gz) against an RTSTRUCT or DICOM-SEG, rasterised on its CT (the series in REF's folder, or DIR).
    Without --organs, the reference's ROIs that are catalogue organs are scored (not GTV, PTV, body ...)."""
    import tempfile

    from .datasets import case_id
    from .io import save_labels, sidecar_path
    from .metrics.report import main_evaluate
    from .organs import ORGANS

    pred, ref = Path(pred_dir), Path(ref_dir)
    if not ref.is_file():
        raise InputError(f"With --reference-series the reference must be an RTSTRUCT or DICOM-SEG file, but {ref} "
                         "is a folder.")
    if not pred.exists():
        raise InputError(f"The prediction {pred} does not exist.")
    preds = [pred] if pred.is_file() else [p for p in sorted(pred.iterdir()) if p.is_file() and case_id(p)]
    preds = [p for p in preds if case_id(p)]
    if not preds:
        raise InputError(f"No .nii.gz or .nii label map in {pred} to score against {ref.name}.")
    ct = reference_ct(ref, reference_series, option="--reference-series")
    seg = labels_from_dicom(ref, ct)
    if organs is None:
        organs = [n for n in seg.names.values() if n in ORGANS] or list(seg.names.values())
    prefix = out_prefix or (pred.parent if pred.is_file() else pred) / "evaluation"
    with tempfile.TemporaryDirectory(prefix="organscope-evaluate-") as tmp:
        tmp_pred, tmp_ref = Path(tmp) / "pred", Path(tmp) / "ref"
        tmp_pred.mkdir()
        tmp_ref.mkdir()
        for p in preds:
            cid = case_id(p)
            (tmp_pred / p.name).symlink_to(p.resolve())
            side = sidecar_path(p)
            if side.is_file():
                (tmp_pred / side.name).symlink_to(side.resolve())
            save_labels(ct, seg.labels, tmp_ref / f"{cid}.nii.gz", seg.names)
        return main_evaluate(tmp_pred, tmp_ref, out_prefix=prefix, tolerance_mm=tolerance_mm, organs=organs)
