"""Anatomy QC (organscope.qc) measured: on the 33 OpenKBP validation cases, the fraction of truly present
(contoured) organs kept and the mean Dice change per engine; on scans outside head-and-neck (TotalSegmentator A, B,
C, the pyradiomics lung CTs, LUNG1-001, validation scans cut below the larynx / above the mandible), the
head-and-neck organs still reported per engine, and where the spinal cord and oesophagus lie.

    python benchmarks/qc_check.py [--engines sparse,cnn3d] [--cache DIR] [--pyradiomics DIR]

Each scan goes through pipeline.segment_volume with keep_unverified=True (the engine, then the check), and the
default output is that segmentation with the unverified organs dropped (qc.drop_organs: what segment_volume does
without keep_unverified). --cache DIR reuses raw engine label maps saved there as ENGINE__CASE.npz (labels, names,
conf) and applies qc.apply_qc to them (the same check, without re-running the engines).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from organscope.io import load_labels, load_volume
from organscope.pipeline import SegmentOptions, segment_volume
from organscope.qc import HEAD_AND_NECK, apply_qc, drop_organs
from organscope.segmentation import Segmentation
from organscope.volume import Volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ENGINES = ("sparse", "cnn3d", "cascade", "slice2d")
OKBP = {"brainstem": 1, "spinal_cord": 2, "parotid_right": 3, "parotid_left": 4, "esophagus": 5, "larynx": 6,
        "mandible": 7}


def raw_and_checked(vol: Volume, engine: str, case: str, cache: Path | None):
    if cache is not None and (cache / f"{engine}__{case}.npz").exists():
        z = np.load(cache / f"{engine}__{case}.npz")
        names = {int(s.split(":")[0]): s.split(":", 1)[1] for s in z["names"]}
        conf = {s.split(":")[0]: float(s.split(":")[1]) for s in z["conf"]}
        seg = Segmentation(vol.with_array(z["labels"]), names, confidence=conf)
        raw = apply_qc(vol, seg, model_region=HEAD_AND_NECK, keep_unverified=True, engine=engine)
    else:
        raw = segment_volume(vol, SegmentOptions(engine=engine, keep_unverified=True))
    return raw, drop_organs(raw, raw.qc.unverified())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def validation(engines, cache):
    ds = json.loads((DATA / "openkbp" / "dataset.json").read_text())
    cases = sorted(p.name.replace(".nii.gz", "") for p in (DATA / "openkbp" / "images").glob("okbp_validation_*"))
    organs_of = _contoured(ds)
    print("\nOpenKBP validation (33 cases): truly present organs kept, mean Dice before -> after QC")
    print(f"{'engine':<8} {'present':>8} {'kept':>6} {'frac':>6} {'dice raw':>9} {'dice qc':>8} {'change':>8}  dropped")
    for e in engines:
        n_true = n_kept = 0
        d_raw, d_qc, dropped = [], [], []
        for case in cases:
            vol = load_volume(DATA / "openkbp" / "images" / f"{case}.nii.gz")
            ref = load_labels(DATA / "openkbp" / "labels" / f"{case}.nii.gz").array
            raw, qc = raw_and_checked(vol, e, case, cache)
            inv_raw = {n: v for v, n in raw.names.items()}
            for organ in organs_of.get(case, OKBP):
                t = ref == OKBP[organ]
                if not t.any():
                    continue
                v = inv_raw[organ]
                n_true += 1
                n_kept += bool((qc.labels.array == v).any()) or not (raw.labels.array == v).any()
                d_raw.append(dice(raw.labels.array == v, t))
                d_qc.append(dice(qc.labels.array == v, t))
            dropped += [f"{case[-3:]}:{n}({raw.qc.organs[n].reasons[0][:40]})" for n in raw.qc.unverified()]
        print(f"{e:<8} {n_true:>8} {n_kept:>6} {n_kept / max(n_true, 1):>6.3f} {np.mean(d_raw):>9.4f} "
              f"{np.mean(d_qc):>8.4f} {np.mean(d_qc) - np.mean(d_raw):>+8.4f}  {'; '.join(dropped) or '-'}")


def _contoured(ds) -> dict[str, list[str]]:
    out = {}
    for key in ("cases", "training", "validation"):
        for c in ds.get(key, []) if isinstance(ds.get(key), list) else []:
            if isinstance(c, dict) and "organs" in c:
                name = Path(str(c.get("image", c.get("case", c.get("name", ""))))).name.replace(".nii.gz", "")
                out[name] = list(c["organs"])
    if isinstance(ds.get("cases"), dict):
        out.update({k: list(v["organs"] if isinstance(v, dict) else v) for k, v in ds["cases"].items()})
    return out


def out_of_region_scans(pyrad: Path | None):
    ts = DATA / "totalsegmentator-example"
    scans = [("TS-A abdomen/pelvis", ts / "subjectA_ct.nii.gz", "subjectA_ct"),
             ("TS-B upper abdomen", ts / "subjectB_ct_dicom", "subjectB_ct_dicom"),
             ("TS-C chest CTA", ts / "subjectC_ct.nii.gz", "subjectC_ct"),
             ("LUNG1-001 chest", DATA / "nsclc-rtstruct" / "LUNG1-001" / "image", "LUNG1-001")]
    if pyrad is not None:
        scans += [(f"pyradiomics {n}", pyrad / f"{n}_image.nrrd", f"{n}_image") for n in ("lung1", "lung2")]
    return [(label, load_volume(p), key) for label, p, key in scans if p.exists()]


def cut_scans():
    """Validation scans cut below the larynx (lower neck and shoulders) and above the mandible (head only)."""
    out = []
    for case in ("okbp_validation_207", "okbp_validation_222", "okbp_validation_230"):
        vol = load_volume(DATA / "openkbp" / "images" / f"{case}.nii.gz")
        lab = load_labels(DATA / "openkbp" / "labels" / f"{case}.nii.gz")
        s_axis = 2  # OpenKBP: P, L, I; index grows inferior
        for organ, below in (("larynx", True), ("mandible", False)):
            idx = np.argwhere(lab.array == OKBP[organ])
            if idx.size == 0:
                continue
            if below:  # keep the slices below the larynx's lowest
                sl = slice(int(idx[:, s_axis].max()) + 1, vol.shape[s_axis])
            else:  # keep the slices above the mandible's top
                sl = slice(0, int(idx[:, s_axis].min()))
            if sl.stop - sl.start < 10:
                continue
            from organscope.geometry import crop_affine

            start = [0, 0, sl.start]
            v = Volume(np.ascontiguousarray(vol.array[:, :, sl]), crop_affine(vol.affine, start), dict(vol.meta))
            truth = lab.array[:, :, sl]
            out.append((f"{case[-3:]} cut {'below larynx' if below else 'above mandible'}", v, truth))
    return out


def outside(engines, cache, pyrad):
    print("\nScans outside head-and-neck: organs reported without QC -> with QC (falsely reported head-and-neck "
          "organs)")
    scans = out_of_region_scans(pyrad)
    for label, vol, key in scans:
        row = []
        for e in engines:
            raw, qc = raw_and_checked(vol, e, key, cache)
            row.append(f"{e}: {len(raw.present())}->{len(qc.present())} {','.join(qc.present()) or ''}")
        region = raw.qc.scan
        print(f"{label:<22} region={region.region:<18} neck_mm={region.neck_mm:5.0f}  " + " | ".join(row))
    print("\nOpenKBP validation scans cut so that organs are missing: organs reported without any true voxel in "
          "the cut, without QC -> with QC")
    for label, vol, truth in cut_scans():
        row = []
        for e in engines:
            raw, qc = raw_and_checked(vol, e, "none", None)
            def false(seg):
                return [n for n in seg.present() if not (truth == OKBP[n]).any()]
            row.append(f"{e}: {len(false(raw))}->{len(false(qc))} {','.join(false(qc))}")
        print(f"{label:<28} region={raw.qc.scan.region:<18} " + " | ".join(row))


def cord_and_oesophagus(engines, cache):
    """Where the engines' spinal cord and oesophagus lie in subject A (TotalSegmentator labels) and LUNG1 (RTSTRUCT)."""
    ts = DATA / "totalsegmentator-example"
    names = json.loads((ts / "labels.json").read_text())
    ids = {v: int(k) for k, v in names.items()} if all(k.isdigit() for k in names) else names
    lab_a = load_labels(ts / "subjectA_labels.nii.gz").array
    truths = {"subjectA_ct": {"spinal_cord": lab_a == ids.get("spinal_cord", -1),
                              "esophagus": lab_a == ids.get("esophagus", -1)}}
    print("\nSpinal cord / oesophagus found outside head-and-neck: fraction of the found voxels on the true organ "
          "(TotalSegmentator A; LUNG1 via organscope convert, cord only)")
    vols = {"subjectA_ct": load_volume(ts / "subjectA_ct.nii.gz")}
    lung1 = Path("/tmp/qcw/lung1_rt.nii.gz")
    if lung1.exists():
        lab = load_labels(lung1)
        side = json.loads(lung1.with_name("lung1_rt.json").read_text())["labels"]
        cord = next((v for k, v in side.items() if "cord" in k.lower()), None)
        if cord is not None:
            vols["LUNG1-001"] = load_volume(DATA / "nsclc-rtstruct" / "LUNG1-001" / "image")
            truths["LUNG1-001"] = {"spinal_cord": lab.array == cord}
    for key, vol in vols.items():
        for e in engines:
            raw, _ = raw_and_checked(vol, e, key, cache)
            for organ, t in truths[key].items():
                v = {n: i for i, n in raw.names.items()}[organ]
                m = raw.labels.array == v
                if m.any():
                    print(f"{key:<12} {e:<8} {organ:<12} found {m.sum() * np.prod(vol.spacing_mm) / 1000:6.1f} ml"
                          f"  on the true organ {float((m & t).sum() / m.sum()):.2f}  Dice {dice(m, t):.3f}")
                else:
                    print(f"{key:<12} {e:<8} {organ:<12} not found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--pyradiomics", type=Path, default=Path("/tmp/pyrad/pyradiomics-3.0.1/data"))
    ap.add_argument("--skip-validation", action="store_true")
    args = ap.parse_args()
    engines = args.engines.split(",")
    pyrad = args.pyradiomics if args.pyradiomics.exists() else None
    if not args.skip_validation:
        validation(engines, args.cache)
    outside(engines, args.cache, pyrad)
    cord_and_oesophagus(engines, args.cache)


if __name__ == "__main__":
    main()
