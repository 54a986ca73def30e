"""Labels from probabilities interpolated to the scan's voxels, against nearest labels (issue 14).

The ensemble fuses its members' class probabilities on a grid of at most 2.5 mm per voxel; its labels reach the
scan's voxels either by nearest neighbour from that grid (blocks of 2.5 mm on a 1 mm scan: the default) or as
the argmax of the fused probabilities interpolated linearly at every scan voxel (`linear_output`, smooth
contours). This prints Dice and NSD (2 mm tolerance) of both, per organ and mean, on the OpenKBP validation
cases resampled to 1 mm isotropic and to 0.8 x 0.8 x 1.5 mm (benchmarks/robustness.py's `iso1` and `clin`
variants: every third validation case, 11; image anti-aliased linear, labels nearest neighbour from OpenKBP's own
~4 x 4 x 2.5 mm grid, so the reference itself is made of blocks of the original voxels).

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
    args = ap.parse_args(argv)

    from organscope.engines.ensemble import EnsembleEngine
    from organscope.geometry import spacing_mm
    from organscope.metrics.report import score_case
    from organscope.volume import Volume

    engines = {"nearest": EnsembleEngine(threads=args.threads),
               "linear": EnsembleEngine(threads=args.threads, linear_output=True)}
    cases = R.validation_cases()[::3][:args.cases]
    for condition in args.conditions.split(","):
        scores = {mode: {o: [] for o in R.ORGANS} for mode in engines}
        seconds = {mode: [] for mode in engines}
        for c in cases:
            img, lab, affine, _ = R.variant(c["case"], condition, Path(args.cache))
            vol = Volume(img, affine)
            spacing = spacing_mm(affine)
            for mode, eng in engines.items():
                t = time.perf_counter()
                seg = eng.segment(vol)
                seconds[mode].append(time.perf_counter() - t)
                by_name = {n: v for v, n in seg.names.items()}
                organs = [(o, by_name.get(o), R.ORGANS.index(o) + 1) for o in c["organs"]]
                for s in score_case(seg.labels.array, lab, spacing, organs, tolerance_mm=TOLERANCE_MM):
                    scores[mode][s.organ].append((s.dice, s.nsd))
            print(f"{condition} {c['case']}: " + ", ".join(
                f"{mode} Dice {np.mean([v[-1][0] for v in scores[mode].values() if v]):.3f}" for mode in engines),
                file=sys.stderr, flush=True)
        print(f"\n== {condition}: {len(cases)} validation cases, {img.shape[0]}x{img.shape[1]}x{img.shape[2]} "
              f"voxels for the last; Dice / NSD at {TOLERANCE_MM:g} mm (mean over cases per organ; mean of organs)")
        print(f"{'labels':10s}" + "".join(f"{o[:12]:>14s}" for o in R.ORGANS) + f"{'mean':>14s}{'s/scan':>8s}")
        for mode in engines:
            cells, dice_m, nsd_m = [], [], []
            for o in R.ORGANS:
                v = np.array(scores[mode][o], float)
                d, n = (np.nanmean(v[:, 0]), np.nanmean(v[:, 1])) if len(v) else (np.nan, np.nan)
                dice_m.append(d)
                nsd_m.append(n)
                cells.append(f"{d:.3f}/{n:.3f}")
            print(f"{mode:10s}" + "".join(f"{x:>14s}" for x in cells)
                  + f"{np.nanmean(dice_m):.3f}/{np.nanmean(nsd_m):.3f}".rjust(14)
                  + f"{np.median(seconds[mode]):8.2f}")


if __name__ == "__main__":
    main()
