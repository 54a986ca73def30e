"""What a one-voxel disagreement costs in Dice, per organ, on a labelled dataset's own grid (issue 14 context).

The OpenKBP labels lie on a coarse grid (128 x 128 x 128, 3.5-5.1 mm in-plane, 2-3 mm slices), on which the spinal
cord or the oesophagus is two to four voxels across. This prints, per organ over the cases that contour it, the
mean Dice between each reference mask and the same mask
  - shifted by one voxel (the mean over the six directions; within axial slices and across them separately),
  - eroded or dilated by one voxel (6-connected),
beside the mean size in voxels and, when given (--oof, e.g. cv/sparse/pooled.json), an engine's out-of-fold Dice:
a segmentation whose boundary is everywhere one voxel off scores about the shift column, so it is the scale
against which an organ's Dice on this data should be read. Nothing is trained or run; labels only.

    PYTHONPATH=src python benchmarks/label_sensitivity.py /work/shared/data/openkbp --oof cv/sparse/pooled.json

Needs a labelled dataset folder (../shared/data/openkbp; not part of a user's clone)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from organscope.datasets import Dataset  # noqa: E402
from organscope.metrics.overlap import confusion  # noqa: E402
from organscope.metrics.overlap import dice as _dice  # noqa: E402
from organscope.sampling.points import superior_axis  # noqa: E402

CROSS = ndimage.generate_binary_structure(3, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return _dice(confusion(b, a))


def shifted(mask: np.ndarray, axis: int, step: int) -> np.ndarray:
    """The mask moved one voxel along `axis` (what leaves the grid is lost, nothing enters)."""
    out = np.zeros_like(mask)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[axis] = slice(0, -1) if step > 0 else slice(1, None)
    dst[axis] = slice(1, None) if step > 0 else slice(0, -1)
    out[tuple(dst)] = mask[tuple(src)]
    return out


def organ_scores(mask: np.ndarray, through_axis: int) -> dict[str, float]:
    """Dice of `mask` against its one-voxel shifts, erosion and dilation; `through_axis`: the axis across axial
    slices (superior-inferior)."""
    plane = [dice(mask, shifted(mask, ax, s)) for ax in range(3) if ax != through_axis for s in (-1, 1)]
    through = [dice(mask, shifted(mask, through_axis, s)) for s in (-1, 1)]
    return {"voxels": float(mask.sum()), "shift_in_plane": float(np.mean(plane)),
            "shift_through_plane": float(np.mean(through)), "shift_mean": float(np.mean(plane + through)),
            "eroded": dice(mask, ndimage.binary_erosion(mask, CROSS)),
            "dilated": dice(mask, ndimage.binary_dilation(mask, CROSS))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a labelled dataset folder (dataset.json, images/, labels/)")
    ap.add_argument("--oof", type=Path, help="a pooled out-of-fold summary (crossval --pool) to print beside")
    ap.add_argument("--json", type=Path, help="also write the per-organ means here")
    a = ap.parse_args(argv)
    ds = Dataset(a.data)
    per_organ: dict[str, list[dict]] = {}
    for case in ds.cases:
        lab = case.load_labels()
        arr = np.asarray(lab.array)
        through = superior_axis(lab.affine)  # the axis across axial slices
        for organ in case.organs:
            mask = arr == ds.label_map.ids[organ]
            if mask.any():
                per_organ.setdefault(organ, []).append(organ_scores(mask, through))
    oof = {}
    if a.oof:
        pooled = json.loads(a.oof.read_text())
        oof = pooled.get("summary", pooled).get("dice", {})
    cols = ["voxels", "shift_in_plane", "shift_through_plane", "shift_mean", "eroded", "dilated"]
    means = {o: {c: float(np.mean([r[c] for r in rows])) for c in cols} | {"cases": len(rows)}
             for o, rows in sorted(per_organ.items())}
    print(f"{len(ds.cases)} cases; Dice of each reference mask against itself moved or grown by one voxel")
    print(f"{'organ':<15}{'cases':>6}{'voxels':>8}{'shift xy':>10}{'shift z':>9}{'shift':>7}{'eroded':>8}"
          f"{'dilated':>9}" + ("   out-of-fold" if oof else ""))
    for o, m in means.items():
        print(f"{o:<15}{m['cases']:>6}{m['voxels']:>8.0f}{m['shift_in_plane']:>10.3f}{m['shift_through_plane']:>9.3f}"
              f"{m['shift_mean']:>7.3f}{m['eroded']:>8.3f}{m['dilated']:>9.3f}"
              + (f"{oof[o]:>14.3f}" if o in oof else ""))
    avg = {c: float(np.mean([m[c] for m in means.values()])) for c in cols[1:]}
    print(f"{'mean of organs':<29}{avg['shift_in_plane']:>10.3f}{avg['shift_through_plane']:>9.3f}"
          f"{avg['shift_mean']:>7.3f}{avg['eroded']:>8.3f}{avg['dilated']:>9.3f}"
          + (f"{np.mean([oof[o] for o in means if o in oof]):>14.3f}" if oof else ""))
    if a.json:
        a.json.write_text(json.dumps({"organs": means, "mean_of_organs": avg}, indent=1) + "\n")


if __name__ == "__main__":
    main()
