"""RTSTRUCT check on the real clinical case (../shared/data/nsclc-rtstruct/LUNG1-001): prints figures.

1. `organscope convert` (RTSTRUCT + CT -> label map) against an independent rasterisation written here
   from the raw DICOM with matplotlib.path: slices matched by sorting the CT files' z, pixel centres
   from ImagePositionPatient + PixelSpacing, even-odd by XOR of point-in-polygon tests. Per ROI: volume
   (ml) and centroid (mm), both for convert's label map (where ROIs overlap the smaller one wins) and for
   the ROI's own mask (`io.rtstruct.roi_mask`).
2. label map -> RTSTRUCT -> label map (`organscope convert` both ways): Dice per ROI.
3. The written RTSTRUCT read back with pydicom (and rt-utils / dicompyler-core if importable).
4. `organscope segment --rtstruct` on a clinic export folder made from the case (CT slices + the RTSTRUCT +
   a fake RTPLAN), timed.

    PYTHONPATH=src python benchmarks/check_rtstruct_lung1.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as MplPath

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsclc-rtstruct" / "LUNG1-001"


def independent_masks(ct_dir: Path, rs_path: Path) -> tuple[dict[str, np.ndarray], float, tuple]:
    """{ROI name: mask (slices, rows, columns)} from the raw files, voxel volume (mm3), and a function
    (slice, row, column) -> LPS mm. Axial slices with identity orientation only (as this case is)."""
    cts = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(ct_dir.iterdir())]
    cts.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    z = np.array([float(d.ImagePositionPatient[2]) for d in cts])
    first = cts[0]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    dr, dc = (float(v) for v in first.PixelSpacing)
    x0, y0 = float(first.ImagePositionPatient[0]), float(first.ImagePositionPatient[1])
    rows, cols = int(first.Rows), int(first.Columns)
    yy, xx = np.meshgrid(y0 + dr * np.arange(rows), x0 + dc * np.arange(cols), indexing="ij")
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    rs = pydicom.dcmread(rs_path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
    out = {}
    for rc in rs.ROIContourSequence:
        mask = np.zeros((len(z), rows, cols), bool)
        for c in rc.ContourSequence:
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(z - pts[0, 2])))
            if abs(z[k] - pts[0, 2]) > 0.5 * np.median(np.diff(z)):
                continue
            inside = MplPath(pts[:, :2]).contains_points(centres).reshape(rows, cols)
            mask[k] ^= inside
        out[names[int(rc.ReferencedROINumber)]] = mask
    step = float(np.median(np.diff(z)))

    def to_mm(k, r, c):
        return np.array([x0 + dc * c, y0 + dr * r, z[0] + step * k])

    return out, dr * dc * step, to_mm


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep the files")
    ap.add_argument("--engine", default="sparse")
    args = ap.parse_args()
    if not CASE.is_dir():
        print(f"{CASE} is absent; nothing to check.")
        return 0
    from organscope.io import load_labels, load_volume
    from organscope.io.rtstruct import read_rtstruct, roi_mask
    from organscope.organs import organ_from_roi_name

    work = args.keep or Path(tempfile.mkdtemp(prefix="rtcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "organscope.cli"]
    rs_path = CASE / "mask_rtstruct" / "1-1.dcm"

    # 1. convert vs an independent rasterisation
    t = run(exe + ["convert", str(rs_path), "-o", str(work / "lung1.nii.gz"), "--ct", str(CASE / "image")])
    print(f"convert RTSTRUCT -> label map: {t:.2f} s (process, including start-up)")
    lab = load_labels(work / "lung1.nii.gz")
    names = json.loads((work / "lung1.json").read_text())["labels"]
    ct = load_volume(CASE / "image")
    ind, voxel_mm3, to_mm = independent_masks(CASE / "image", rs_path)
    ss = read_rtstruct(rs_path)
    affine = lab.affine
    print(f"\n{'ROI':<12} {'independent ml':>14} {'convert ml':>11} {'diff %':>7} {'centroid mm':>12}   "
          f"{'own mask ml':>11} {'diff %':>7} {'centroid mm':>12}")
    for roi_name, ref in ind.items():
        name = organ_from_roi_name(roi_name)
        kk, rr, cc = np.nonzero(ref)
        ref_ml = ref.sum() * voxel_mm3 / 1000
        ref_c = to_mm(kk.mean(), rr.mean(), cc.mean())
        row = [f"{roi_name:<12} {ref_ml:14.2f}"]
        own = roi_mask(next(r for r in ss.rois if r.roi_name == roi_name), ct)
        for mask in (np.asarray(lab.array) == names[name], own):
            ii, jj, k2 = np.nonzero(mask)
            ml = mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000
            ras = affine[:3, :3] @ np.array([ii.mean(), jj.mean(), k2.mean()]) + affine[:3, 3]
            lps = ras * np.array([-1, -1, 1])
            row.append(f"{ml:11.2f} {100 * (ml - ref_ml) / ref_ml:7.2f} {np.linalg.norm(lps - ref_c):12.3f}")
        print("   ".join(row))

    # 2. label map -> RTSTRUCT -> label map
    t1 = run(exe + ["convert", str(work / "lung1.nii.gz"), "-o", str(work / "lung1.rtstruct.dcm"),
                    "--ct", str(CASE / "image")])
    t2 = run(exe + ["convert", str(work / "lung1.rtstruct.dcm"), "-o", str(work / "lung1_back.nii.gz"),
                    "--ct", str(CASE / "image")])
    back = load_labels(work / "lung1_back.nii.gz")
    names_back = json.loads((work / "lung1_back.json").read_text())["labels"]
    print(f"\nlabel map -> RTSTRUCT {t1:.2f} s, RTSTRUCT -> label map {t2:.2f} s (processes)")
    for name, v in names.items():
        if v == 0:
            continue
        a, b = np.asarray(lab.array) == v, np.asarray(back.array) == names_back[name]
        print(f"  round trip Dice {name:<12} {2 * (a & b).sum() / (a.sum() + b.sum()):.5f}")

    # 3. read back
    ds = pydicom.dcmread(work / "lung1.rtstruct.dcm")
    n_contours = sum(len(rc.ContourSequence) for rc in ds.ROIContourSequence)
    longest = max(len(str(v)) for rc in ds.ROIContourSequence for c in rc.ContourSequence for v in c.ContourData)
    fewest = min(int(c.NumberOfContourPoints) for rc in ds.ROIContourSequence for c in rc.ContourSequence)
    print(f"\npydicom read back: ROIs {[r.ROIName for r in ds.StructureSetROISequence]}, {n_contours} contours, "
          f"fewest points {fewest}, longest DS {longest} characters")
    try:
        from rt_utils import RTStructBuilder

        rt = RTStructBuilder.create_from(dicom_series_path=str(CASE / "image"),
                                         rt_struct_path=str(work / "lung1.rtstruct.dcm"))
        own = {organ_from_roi_name(r): int((np.asarray(back.array) == v).sum()) for r, v in names_back.items() if v}
        for roi in rt.get_roi_names():
            m = rt.get_roi_mask_by_name(roi)
            ours = own[organ_from_roi_name(roi)]
            print(f"  rt-utils: {roi}: {int(m.sum())} voxels (organscope {ours}, rt-utils "
                  f"{100 * (int(m.sum()) - ours) / ours:+.1f} %: it rounds vertices to whole pixels and cv2.fillPoly fills the boundary pixels too)")
    except ImportError as e:
        print(f"  rt-utils not importable here ({e})")
    try:
        from dicompylercore import dicomparser

        parsed = dicomparser.DicomParser(str(work / "lung1.rtstruct.dcm"))
        s = parsed.GetStructures()
        print(f"  dicompyler-core: {[(v['name'], v['type']) for v in s.values()]}")
        for number, v in s.items():
            planes = parsed.GetStructureCoordinates(number)
            print(f"    {v['name']}: {len(planes)} planes")
    except ImportError as e:  # 0.5.6 imports pydicom's read_file, which pydicom 3 removed
        print(f"  dicompyler-core not importable here ({e})")

    # 4. segment --rtstruct on a clinic export folder
    clinic = work / "clinic_export"
    if clinic.exists():
        shutil.rmtree(clinic)
    shutil.copytree(CASE / "image", clinic)
    shutil.copy(rs_path, clinic / "RS.1-1.dcm")
    plan = pydicom.dcmread(rs_path, stop_before_pixels=True)
    plan.Modality = "RTPLAN"
    plan.SOPClassUID = plan.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    plan.SeriesInstanceUID = pydicom.uid.generate_uid()
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for seq in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence"):
        delattr(plan, seq)
    plan.RTPlanLabel = "FAKE"
    plan.save_as(clinic / "RP.fake.dcm")
    out = work / "seg" / "lung1.nii.gz"
    out.parent.mkdir(exist_ok=True)
    t = run(exe + ["segment", "-i", str(clinic), "-o", str(out), "--engine", args.engine, "--rtstruct",
                   "--no-progress"])
    ds = pydicom.dcmread(out.with_name("lung1.rtstruct.dcm"))
    print(f"\nsegment --rtstruct --engine {args.engine} on {clinic.name} ({len(list(clinic.iterdir()))} files): "
          f"{t:.2f} s (process, including start-up); ROIs {[r.ROIName for r in ds.StructureSetROISequence]}")
    t = run(exe + ["segment", "-i", str(clinic), "-o", str(out.with_name("plain.nii.gz")), "--engine", args.engine,
                   "--no-progress"])
    print(f"segment without --rtstruct on the same folder: {t:.2f} s")
    from organscope.engines.base import Segmentation
    from organscope.outputs.rtstruct import write_rtstruct

    seg_lab = load_labels(out)
    seg_names = {v: n for n, v in json.loads(out.with_name("lung1.json").read_text())["labels"].items() if v}
    t0 = time.perf_counter()
    write_rtstruct(Segmentation(ct.with_array(np.asarray(seg_lab.array)), seg_names, {}), ct,
                   work / "timing.rtstruct.dcm", engine=args.engine)
    print(f"write_rtstruct alone, in process, for that result: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    write_rtstruct(Segmentation(ct.with_array(np.asarray(lab.array)), {v: n for n, v in names.items() if v}, {}),
                   ct, work / "timing2.rtstruct.dcm", engine="convert")
    print(f"write_rtstruct alone, in process, for the four clinical ROIs: {time.perf_counter() - t0:.2f} s")
    print(f"\nfiles in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
