"""Field-of-view, spacing and obliquity robustness of the engines on OpenKBP validation cases (issue 13).

Per engine and condition, the validation mean Dice (mean over organs of the per-organ mean, contoured organs
only, as `organscope evaluate`), each engine run through the Python API on variants of the cases:

    native     the case as delivered (128^3, 3.5-5.4 mm in-plane, 2-3.3 mm slices)
    cut400/300/250  the field of view cut in-plane to a square of that many mm centred on the body (the
               bounding box of voxels above -500 HU); where the square would cut a labelled organ it is widened
               to hold all of them (the count of widened cases is printed)
    iso1       resampled to 1 mm isotropic (image: anti-aliased linear; labels: nearest neighbour)
    clin       resampled to 0.8 x 0.8 x 1.5 mm (a clinical neck CT grid)
    rot10      the image resampled (linear) onto a grid turned 10 degrees about the superior axis around the
               scan's centre, the labels by nearest neighbour onto the same grid, with the oblique affine of that
               grid (world positions are kept: the anatomy is tilted against the voxel axes)

Variants are made once into a cache folder (--cache) and reused; each engine's per-case scores are cached under
--tag so an old checkout can be scored on the same variants for a before/after table:

    PYTHONPATH=src python benchmarks/robustness.py --tag after
    PYTHONPATH=/tmp/scale-base/src python benchmarks/robustness.py --tag before --engines cnn3d,cascade \\
        --conditions native,cut300,cut250
    python benchmarks/robustness.py --table before,after      # (PYTHONPATH=src) both tables from the cache

Cost: all 33 validation cases for native and for the cuts of cnn3d and cascade; every third case (11) for the
rest (sparse and slice2d cuts, and every engine's iso1, clin and rot10: up to ~100 M voxels per scan).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/openkbp")
ENGINES = ("sparse", "cnn3d", "cascade", "slice2d")
CONDITIONS = ("native", "cut400", "cut300", "cut250", "iso1", "clin", "rot10")
CUT_MM = {"cut400": 400.0, "cut300": 300.0, "cut250": 250.0}
SPACING = {"iso1": (1.0, 1.0, 1.0), "clin": (0.8, 0.8, 1.5)}
ORGANS = ("brainstem", "spinal_cord", "parotid_right", "parotid_left", "esophagus", "larynx", "mandible")


def validation_cases() -> list[dict]:
    ds = json.loads((DATA / "dataset.json").read_text())
    return [c for c in ds["cases"] if c["split"] == "validation"]


def case_set(engine: str, condition: str, cases: list[dict]) -> list[dict]:
    """All cases for native, and for the cuts of cnn3d and cascade; every third case otherwise (and for the table's
    "native/3" column: native on those cases, to compare the subset's conditions with)."""
    if condition == "native/3":
        return cases[::3]
    if condition == "native" or (condition in CUT_MM and engine in ("cnn3d", "cascade")):
        return cases
    return cases[::3]


# ---- variants --------------------------------------------------------------------------------------------------

def _load(case: str):
    import nibabel as nib

    img = nib.load(str(DATA / "images" / f"{case}.nii.gz"))
    lab = nib.load(str(DATA / "labels" / f"{case}.nii.gz"))
    return (np.asarray(img.dataobj).astype(np.int16), np.asarray(lab.dataobj).astype(np.uint8),
            np.asarray(img.affine, float))


def _spacing(affine):
    return np.sqrt((affine[:3, :3] ** 2).sum(0))


def _in_plane_axes(affine) -> list[int]:
    """The two voxel axes closest to the world x (R) and y (A) axes."""
    dom = [int(np.argmax(np.abs(affine[:3, a]))) for a in range(3)]
    return [a for a in range(3) if dom[a] != 2]


def cut(img, lab, affine, width_mm: float):
    """(img, lab, affine, widened): a square of width_mm centred in-plane on the body's bounding box, widened to
    hold every labelled voxel; kept inside the scan."""
    sp = _spacing(affine)
    start, stop, widened = [0, 0, 0], list(img.shape), False
    body = img > -500
    organ = lab > 0
    for a in _in_plane_axes(affine):
        other = tuple(b for b in range(3) if b != a)
        bidx = np.flatnonzero(body.any(axis=other))
        oidx = np.flatnonzero(organ.any(axis=other))
        n = int(round(width_mm / sp[a]))
        centre = (bidx.min() + bidx.max() + 1) / 2 if len(bidx) else img.shape[a] / 2
        s = int(round(centre - n / 2))
        e = s + n
        if len(oidx) and (oidx.min() < s or oidx.max() >= e):
            widened = True
            s, e = min(s, int(oidx.min()) - 1), max(e, int(oidx.max()) + 2)
        start[a], stop[a] = max(0, s), min(img.shape[a], e)
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    out_aff = affine.copy()
    out_aff[:3, 3] = affine[:3, :3] @ np.array(start, float) + affine[:3, 3]
    return np.ascontiguousarray(img[sl]), np.ascontiguousarray(lab[sl]), out_aff, widened


def respace(img, lab, affine, spacing_mm):
    """Resampled over the same field of view (voxel edges kept) to about spacing_mm: image anti-aliased linear,
    labels nearest neighbour."""
    from organscope.grid import resample

    sp = _spacing(affine)
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(img.shape, sp, spacing_mm))
    new = np.rint(resample(img, shape)).astype(np.int16)
    idx = [np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1) for n, m in zip(img.shape, shape)]
    new_lab = lab[np.ix_(*idx)]
    zoom = np.array(img.shape, float) / np.array(shape, float)
    out_aff = affine.copy()
    out_aff[:3, :3] = affine[:3, :3] * zoom
    out_aff[:3, 3] = affine[:3, :3] @ ((zoom - 1) / 2) + affine[:3, 3]
    return new, np.ascontiguousarray(new_lab), out_aff


def rotate(img, lab, affine, degrees: float = 10.0):
    """The scan on a grid turned `degrees` about the world superior axis around its centre (same shape and
    spacing): image linear, labels nearest, outside the scan air and background; the oblique affine."""
    from scipy import ndimage

    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    centre = affine @ np.r_[(np.array(img.shape) - 1) / 2.0, 1.0]
    move = np.eye(4)
    move[:3, 3] = centre[:3]
    back = np.eye(4)
    back[:3, 3] = -centre[:3]
    new_aff = move @ rot @ back @ affine              # new voxel -> world
    to_old = np.linalg.inv(affine) @ new_aff          # new voxel -> old voxel
    grid = np.indices(img.shape, dtype=np.float32).reshape(3, -1)
    coords = to_old[:3, :3].astype(np.float32) @ grid + to_old[:3, 3:4].astype(np.float32)
    new = ndimage.map_coordinates(img.astype(np.float32), coords, order=1, cval=-1024.0).reshape(img.shape)
    new_lab = ndimage.map_coordinates(lab, coords, order=0, cval=0).reshape(img.shape)
    return np.rint(new).astype(np.int16), new_lab.astype(np.uint8), new_aff


def variant(case: str, condition: str, cache: Path):
    """(img, lab, affine, widened) of a case's variant, made once into the cache."""
    f = cache / f"{case}_{condition}.npz"
    if f.exists():
        z = np.load(f)
        return z["img"], z["lab"], z["affine"], bool(z["widened"])
    img, lab, affine = _load(case)
    widened = False
    if condition in CUT_MM:
        img, lab, affine, widened = cut(img, lab, affine, CUT_MM[condition])
    elif condition in SPACING:
        img, lab, affine = respace(img, lab, affine, SPACING[condition])
    elif condition == "rot10":
        img, lab, affine = rotate(img, lab, affine)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{case}_{condition}.tmp.npz"
    np.savez(tmp, img=img, lab=lab, affine=affine, widened=widened)
    tmp.replace(f)
    return img, lab, affine, widened


# ---- scoring ---------------------------------------------------------------------------------------------------

def score(pred: np.ndarray, pred_names: dict, lab: np.ndarray, organs) -> dict[str, float]:
    """Dice per contoured organ (reference label = OpenKBP's value; prediction by the engine's label names)."""
    by_name = {n: int(v) for v, n in pred_names.items()}
    out = {}
    for organ in organs:
        ref = lab == ORGANS.index(organ) + 1
        p = pred == by_name[organ] if organ in by_name else np.zeros_like(ref)
        tot = int(ref.sum()) + int(p.sum())
        out[organ] = 1.0 if tot == 0 else 2.0 * int((ref & p).sum()) / tot
    return out


def run(args) -> None:
    from organscope.engines.registry import get_engine
    from organscope.volume import Volume

    cache = Path(args.cache)
    cases = validation_cases()
    res_dir = cache / "scores" / args.tag
    res_dir.mkdir(parents=True, exist_ok=True)
    engines = {}
    for condition in args.conditions:
        for c in cases:
            todo = [e for e in args.engines if c in case_set(e, condition, cases)
                    and not (res_dir / f"{e}_{condition}_{c['case']}.json").exists()]
            if not todo:
                continue
            img, lab, affine, widened = variant(c["case"], condition, cache)
            vol = Volume(img, affine)
            for e in todo:
                if e not in engines:
                    engines[e] = get_engine(e, threads=args.threads)
                t = time.perf_counter()
                seg = engines[e].segment(vol)
                sec = time.perf_counter() - t
                d = score(seg.labels.array, seg.names, lab, c["organs"])
                (res_dir / f"{e}_{condition}_{c['case']}.json").write_text(
                    json.dumps({"dice": d, "seconds": sec, "widened": widened, "shape": list(img.shape)}))
                print(f"{args.tag} {e:8s} {condition:7s} {c['case']} {np.mean(list(d.values())):.3f} {sec:.1f}s",
                      file=sys.stderr, flush=True)


def table(cache: Path, tag: str, engines, conditions) -> str:
    cases = validation_cases()
    res_dir = cache / "scores" / tag
    lines = [f"[{tag}] validation mean Dice (mean over organs of per-organ means, contoured organs only); "
             "n = cases scored; native/3: native on every third case (the subset of the n=11 cells)",
             "engine    " + "".join(f"{c:>14s}" for c in conditions)]
    widened = {}
    for e in engines:
        row = f"{e:10s}"
        for cond in conditions:
            per_organ: dict[str, list[float]] = {}
            n = 0
            for c in case_set(e, cond, cases):
                f = res_dir / f"{e}_{cond.split('/')[0]}_{c['case']}.json"
                if not f.exists():
                    continue
                r = json.loads(f.read_text())
                n += 1
                widened.setdefault(cond, {})[c["case"]] = r["widened"]
                for o, v in r["dice"].items():
                    per_organ.setdefault(o, []).append(v)
            row += f"{'-':>14s}" if n == 0 else f"{np.mean([np.mean(v) for v in per_organ.values()]):>9.3f} n={n:<2d}"
        lines.append(row)
    for cond in CUT_MM:
        if cond in widened:
            w = widened[cond]
            lines.append(f"{cond}: {sum(w.values())} of {len(w)} cases widened to keep every labelled organ whole")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--cache", default="/tmp/organscope-robustness")
    ap.add_argument("--tag", default="after", help="the name the scores are kept under (e.g. before/after)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--table", default=None, help="only print the tables of these tags (comma-separated)")
    args = ap.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    args.conditions = [c for c in args.conditions.split(",") if c]
    if args.table is None:
        run(args)
    for tag in (args.table.split(",") if args.table else [args.tag]):
        conds = list(args.conditions)
        if "native" in conds:
            conds.insert(conds.index("native") + 1, "native/3")
        print(table(Path(args.cache), tag, args.engines, conds))
        print()


if __name__ == "__main__":
    main()
