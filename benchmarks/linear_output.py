"""Labels from probabilities interpolated to the scan's voxels, against nearest labels (issue 14).

The ensemble fuses its members' class probabilities on a grid of at most 2.5 mm per voxel; its labels reach the
scan's voxels either by nearest neighbour from that grid (blocks of 2.5 mm on a 1 mm scan: the default) or as
the argmax of the fused probabilities interpolated linearly at every scan voxel (`linear_output`, smooth
contours). This prints Dice and NSD (2 mm tolerance) of both, per organ and mean, on the OpenKBP validation
cases resampled to 1 mm isotropic and to 0.8 x 0.8 x 1.5 mm (benchmarks/robustness.py's `iso1` and `clin`
variants: every third validation case, 11; image anti-aliased linear, labels nearest neighbour from OpenKBP's own
~4 x 4 x 2.5 mm grid, so the reference itself is made of blocks of the original voxels). With --smooth-reference
the same scores against a second reference with smooth surfaces: the OpenKBP labels' one-hot maps interpolated
linearly from their own grid to the variant's voxels, argmax (the same operator as linear_output, applied to the
truth).

    PYTHONPATH=src python benchmarks/linear_output.py                     # iso1 and clin, 11 cases each
    PYTHONPATH=src python benchmarks/linear_output.py --conditions iso1 --cases 3

Needs ../shared/data/openkbp (not part of a user's clone)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness as R  # noqa: E402

TOLERANCE_MM = 2.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conditions", default="iso1,clin", help="robustness.py variants (default iso1,clin)")
    ap.add_argument("--cases", type=int, default=None, help="first N of the 11 cases (default all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default="/tmp/organscope-robustness", help="robustness.py's variant cache")
    ap.add_argument("--smooth-reference", action="store_true",
                    help="also score against the labels interpolated linearly (one-hot) to the variant's grid")
    args = ap.parse_args(argv)

    from organscope.engines.ensemble import EnsembleEngine
    from organscope.geometry import spacing_mm
    from organscope.metrics.report import score_case
    from organscope.segmentation import ClassProbabilities
    from organscope.volume import Volume

    def smooth(case: str, affine, shape) -> np.ndarray:
        """The case's labels, one-hot, interpolated linearly onto (affine, shape), argmax."""
        _, lab0, aff0 = R._load(case)
        onehot = np.stack([lab0 == v for v in range(len(R.ORGANS) + 1)]).astype(np.float32)
        target = Volume(np.broadcast_to(np.int16(0), shape), affine)
        return ClassProbabilities(onehot, aff0, ("background", *R.ORGANS)).argmax_on_grid(target)

    engines = {"nearest": EnsembleEngine(threads=args.threads),
               "linear": EnsembleEngine(threads=args.threads, linear_output=True)}
    cases = R.validation_cases()[::3][:args.cases]
    refs = ("blocks", "smooth") if args.smooth_reference else ("blocks",)
    rows = [(mode, ref) for ref in refs for mode in engines]
    for condition in args.conditions.split(","):
        scores = {row: {o: [] for o in R.ORGANS} for row in rows}
        seconds = {mode: [] for mode in engines}
        for c in cases:
            img, lab, affine, _ = R.variant(c["case"], condition, Path(args.cache))
            vol = Volume(img, affine)
            spacing = spacing_mm(affine)
            ref_labels = {"blocks": lab}
            if args.smooth_reference:
                ref_labels["smooth"] = smooth(c["case"], affine, img.shape)
            for mode, eng in engines.items():
                t = time.perf_counter()
                seg = eng.segment(vol)
                seconds[mode].append(time.perf_counter() - t)
                by_name = {n: v for v, n in seg.names.items()}
                organs = [(o, by_name.get(o), R.ORGANS.index(o) + 1) for o in c["organs"]]
                for ref in refs:
                    for s in score_case(seg.labels.array, ref_labels[ref], spacing, organs,
                                        tolerance_mm=TOLERANCE_MM):
                        scores[(mode, ref)][s.organ].append((s.dice, s.nsd))
            print(f"{condition} {c['case']}: " + ", ".join(
                f"{mode} vs {ref} Dice {np.mean([v[-1][0] for v in scores[(mode, ref)].values() if v]):.3f}"
                for mode, ref in rows), file=sys.stderr, flush=True)
        print(f"\n== {condition}: {len(cases)} validation cases, {img.shape[0]}x{img.shape[1]}x{img.shape[2]} "
              f"voxels for the last; Dice / NSD at {TOLERANCE_MM:g} mm (mean over cases per organ; mean of organs)")
        print(f"{'labels vs reference':20s}" + "".join(f"{o[:12]:>14s}" for o in R.ORGANS)
              + f"{'mean':>14s}{'s/scan':>8s}")
        for mode, ref in rows:
            cells, dice_m, nsd_m = [], [], []
            for o in R.ORGANS:
                v = np.array(scores[(mode, ref)][o], float)
                d, n = (np.nanmean(v[:, 0]), np.nanmean(v[:, 1])) if len(v) else (np.nan, np.nan)
                dice_m.append(d)
                nsd_m.append(n)
                cells.append(f"{d:.3f}/{n:.3f}")
            print(f"{mode + ' vs ' + ref:20s}" + "".join(f"{x:>14s}" for x in cells)
                  + f"{np.nanmean(dice_m):.3f}/{np.nanmean(nsd_m):.3f}".rjust(14)
                  + f"{np.median(seconds[mode]):8.2f}")


if __name__ == "__main__":
    main()
