"""How much of an organ's Dice is lost to its craniocaudal extent: which axial slices hold it (issue 14 analysis).

Per organ, over the cases that contour it: Dice; Dice within the axial slices that both the reference and the
prediction contain ("common slices", so boundary disagreement only); the number of slices each spans; the voxels
each has outside those common slices. A thin organ whose contoured length varies from clinician to clinician
(the oesophagus and larynx stop where the planner stopped) loses Dice there that no in-slice accuracy recovers.

    PYTHONPATH=src python benchmarks/slice_extent.py DATA --cv cv/sparse      # each fold model on its own held-out
    PYTHONPATH=src python benchmarks/slice_extent.py tests/data/openkbp       # the shipped sparse model, all cases

--cv scores every fold model under that folder (foldK/sparse_foldK.onnx + scores.json) on its own held-out
patients, out of fold; without it, the shipped sparse model on every case of DATA (for OpenKBP's 203 cases that
includes the ones it was trained on)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from organscope.datasets import Dataset  # noqa: E402
from organscope.engines.sparse import SparseEngine, SparseModel  # noqa: E402
from organscope.metrics.overlap import confusion, dice  # noqa: E402
from organscope.sampling.points import superior_axis  # noqa: E402

COLUMNS = ("dice", "dice_common_slices", "slices_reference", "slices_predicted", "slices_common",
           "reference_voxels_outside", "predicted_voxels_outside")


def extent_scores(reference: np.ndarray, predicted: np.ndarray, slice_axis: int) -> dict[str, float]:
    """The COLUMNS for one organ: boolean masks on one grid, `slice_axis` the axis across axial slices."""
    other = tuple(a for a in range(3) if a != slice_axis)
    zr, zp = reference.any(axis=other), predicted.any(axis=other)
    common = np.flatnonzero(zr & zp)
    rc, pc = np.take(reference, common, axis=slice_axis), np.take(predicted, common, axis=slice_axis)
    return {"dice": dice(confusion(predicted, reference)), "dice_common_slices": dice(confusion(pc, rc)),
            "slices_reference": int(zr.sum()), "slices_predicted": int(zp.sum()), "slices_common": len(common),
            "reference_voxels_outside": int(reference.sum() - rc.sum()),
            "predicted_voxels_outside": int(predicted.sum() - pc.sum())}


def _runs(cv: Path | None, threads: int):
    """(engine, case ids) pairs: each fold model with its held-out cases, or the shipped model with every case."""
    if cv is None:
        yield SparseEngine(threads=threads), None
        return
    for scores in sorted(cv.glob("fold*/scores.json")):
        r = json.loads(scores.read_text())
        model = SparseModel.load(scores.parent / f"sparse_fold{r['fold']}.onnx", threads=threads)
        yield SparseEngine(model=model), r["held_out"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a labelled dataset folder (dataset.json, images/, labels/)")
    ap.add_argument("--cv", type=Path, help="a sparse cross-validation folder (cv/sparse): out-of-fold scores")
    ap.add_argument("--organs", default="esophagus,larynx,spinal_cord,brainstem,parotid_right,parotid_left,mandible")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="also write the per-organ means here")
    a = ap.parse_args(argv)
    ds = Dataset(a.data)
    by_id = {c.case_id: c for c in ds.cases}
    wanted = a.organs.split(",")
    rows: dict[str, list[dict]] = {o: [] for o in wanted}
    for eng, ids in _runs(a.cv, a.threads):
        cls = {n: i for i, n in enumerate(eng.classes)}
        for cid in ids if ids is not None else list(by_id):
            case = by_id[cid]
            todo = [o for o in wanted if o in case.organs]
            if not todo:
                continue
            lab = case.load_labels()
            ref = np.asarray(lab.array)
            pred = np.asarray(eng.segment(case.load_image()).labels.array)
            axis = superior_axis(lab.affine)
            for o in todo:
                rows[o].append(extent_scores(ref == ds.label_map.ids[o], pred == cls[o], axis))
    means = {o: {c: float(np.nanmean([r[c] for r in rs])) for c in COLUMNS} | {"cases": len(rs)}
             for o, rs in rows.items() if rs}
    print(("out of fold (" + str(a.cv) + ")") if a.cv else "the shipped sparse model")
    print(f"{'organ':<15}{'cases':>6}{'Dice':>7}{'in common slices':>18}{'slices ref':>12}{'slices pred':>13}"
          f"{'common':>8}{'ref vox outside':>17}{'pred vox outside':>18}")
    for o, m in means.items():
        print(f"{o:<15}{m['cases']:>6}{m['dice']:>7.3f}{m['dice_common_slices']:>18.3f}{m['slices_reference']:>12.1f}"
              f"{m['slices_predicted']:>13.1f}{m['slices_common']:>8.1f}{m['reference_voxels_outside']:>17.1f}"
              f"{m['predicted_voxels_outside']:>18.1f}")
    if a.json:
        a.json.write_text(json.dumps(means, indent=1) + "\n")


if __name__ == "__main__":
    main()
