"""Measure, per organ and per rule, whether each anatomical prior raises or lowers validation Dice for one
engine, and keep only the rules that help (nnU-Net keeps a post-processing step only if it raises Dice).

    python -m organscope.training.measure_priors --engine sparse --data ../shared/data/openkbp
    python -m organscope.training.measure_priors --engine cnn3d --data ... --pred-dir PRED   # saved predictions

Every case of the split is segmented by the engine (or read from --pred-dir, `<case>.nii.gz` with an optional
`<case>.json` of label names), then scored with `metrics.report.score_case` as is, with each rule alone, with
all rules, and with the rules selected here. Organs are scored only in the cases where they are contoured.
A rule is selected when it raises its organ's mean Dice (over the cases where the organ is contoured) by more
than --min-gain. The figures go to --out (JSON) and the selection to the rules file's `enabled_for[engine]`
(the packaged file unless --rules names another; --no-update leaves it alone).

    python -m organscope.training.measure_priors --data ../shared/data/openkbp --fit-margins-on train

sets every rule's margin from the training split's reference contours instead (see `fit_margins`).

No torch here: engines run through ONNX Runtime.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from .. import geometry
from ..datasets import Case, Dataset
from ..errors import InputError, OrganscopeError
from ..metrics.report import AFFINE_ATOL_MM, OrganScore, score_case
from ..postprocess.priors import BUILTIN, RuleSet, evaluate_rules, load_rules, rules_excess_mm, save_rules

NONE, ALL, SELECTED = "none", "all", "selected"
FIT_SLACK_MM, FIT_STEP_MM, FIT_DROP_LARGEST = 10.0, 5.0, 1


@dataclass
class _CaseData:
    case: Case
    pred: np.ndarray
    affine: np.ndarray
    pred_ids: dict[str, int]
    ref: np.ndarray
    removed: dict[str, np.ndarray]  # rule id -> flat indices removed (only rules that fired)


def packaged_rules_path(name: str = "headneck") -> Path:
    return Path(str(resources.files("organscope") / "data" / BUILTIN[name]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m organscope.training.measure_priors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default=None, help="engine whose predictions are measured (sparse, cnn3d, ...)")
    ap.add_argument("--data", required=True, help="dataset folder (images/, labels/, dataset.json)")
    ap.add_argument("--split", default="validation", help="split to measure on (default validation)")
    ap.add_argument("--pred-dir", default=None, help="read predictions <case>.nii.gz from here instead of segmenting")
    ap.add_argument("--save-pred", default=None, help="write the engine's predictions here (<case>.nii.gz)")
    ap.add_argument("--model", default=None, help="model file for the engine (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    ap.add_argument("--rules", default=None, help="rules JSON (default: the packaged priors_headneck.json)")
    ap.add_argument("--out", default=None, help="figures JSON (default runs/priors_<engine>.json)")
    ap.add_argument("--min-gain", type=float, default=0.0, help="select a rule if mean Dice rises by more than this")
    ap.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance (default 2 mm)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N cases (for a quick check)")
    ap.add_argument("--no-update", action="store_true", help="do not write the selection into the rules file")
    ap.add_argument("--margin-offset-mm", type=float, default=0.0,
                    help="add this to every rule's margin (a sensitivity check; implies --no-update)")
    ap.add_argument("--fit-margins-on", default=None, metavar="SPLIT",
                    help="instead of measuring: set every rule's margin from the reference contours of SPLIT "
                         "(e.g. train) and write the rules file (its selections are cleared)")
    ap.add_argument("--slack-mm", type=float, default=FIT_SLACK_MM, help="--fit-margins-on: mm added (default 10)")
    args = ap.parse_args(argv)
    if args.engine is None and args.fit_margins_on is None:
        ap.error("give --engine (to measure) or --fit-margins-on SPLIT")
    try:
        return _fit(args) if args.fit_margins_on else _run(args)
    except OrganscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    rules_path = Path(args.rules) if args.rules else packaged_rules_path()
    ruleset = load_rules(rules_path)
    if args.margin_offset_mm:
        ruleset = replace(ruleset, rules=tuple(replace(r, margin_mm=r.margin_mm + args.margin_offset_mm)
                                                for r in ruleset.rules))
        args.no_update = True
    ds = Dataset(args.data)
    cases = ds.split(args.split)[: args.limit]
    t0 = time.perf_counter()
    data = [_case_data(c, ds, ruleset, args) for c in _progress(cases, args.engine)]
    t_seg = time.perf_counter() - t0

    scores = {NONE: _score_all(data, [], args.tolerance_mm)}
    for rule in ruleset.rules:
        scores[rule.id] = _score_all(data, [rule.id], args.tolerance_mm, organs=[rule.organ])
    scores[ALL] = _score_all(data, [r.id for r in ruleset.rules], args.tolerance_mm)
    per_rule = {r.id: _rule_effect(r, scores[NONE], scores[r.id], data) for r in ruleset.rules}
    selected = [rid for rid, e in per_rule.items() if e["dice_delta"] > args.min_gain]
    scores[SELECTED] = _score_all(data, selected, args.tolerance_mm)

    organs = list(dict.fromkeys(s.organ for s in scores[NONE]))
    variants = {v: _summary(scores[v], organs) for v in (NONE, ALL, SELECTED)}
    result = {
        "engine": args.engine, "data": str(args.data), "split": args.split, "cases": len(data),
        "predictions": args.pred_dir or "segmented", "rules_file": str(rules_path),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "segment_or_read_s": round(t_seg, 1), "min_gain": args.min_gain,
        "margin_offset_mm": args.margin_offset_mm,
        "variants": variants, "rules": per_rule, "selected": selected,
    }
    out = Path(args.out) if args.out else Path("runs") / f"priors_{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
    print(_report(result, ruleset))
    print(f"Wrote {out}")
    if not args.no_update:
        measurement = {"date": result["date"], "split": args.split, "cases": len(data),
                       "dice_mean": {v: _round(variants[v]["mean"]["dice"]) for v in variants},
                       "rules": {rid: {"dice_delta": _round(e["dice_delta"], 6), "fired": e["fired"], "n": e["n"]}
                                 for rid, e in per_rule.items()}}
        save_rules(ruleset.with_selection(args.engine, selected, measurement), rules_path)
        print(f"Selected {len(selected)} of {len(ruleset.rules)} rules for {args.engine}; wrote {rules_path}")
    return 0


# --- margins from reference contours ---------------------------------------------------------------

def fit_margins(cases: list[Case], ruleset: RuleSet, *, slack_mm: float = FIT_SLACK_MM, step_mm: float = FIT_STEP_MM,
                drop_largest: int = FIT_DROP_LARGEST) -> tuple[RuleSet, dict[str, dict]]:
    """Margins from reference contours: per rule, the distances by which the organ passes the rule's plane
    (rules_excess_mm, anchors from the same reference), pooled over the cases and over the rule's mirror
    image (ids that differ only by _left/_right); the `drop_largest` largest are left out as possible
    contouring errors, `slack_mm` is added and the sum rounded up to `step_mm`. Rules never applicable in
    these cases keep their margin."""
    found: dict[str, list[float]] = {r.id: [] for r in ruleset.rules}
    for case in cases:
        lab = case.load_labels()
        names = {i: n for i, n in case.label_map.names.items() if n in case.organs}
        for rid, e in rules_excess_mm(lab.array, lab.affine, names, ruleset).items():
            if not math.isnan(e):
                found[rid].append(e)
    pooled: dict[str, list[float]] = {}
    for rid, values in found.items():
        pooled.setdefault(_mirror_key(rid), []).extend(values)
    rules, figures = [], {}
    for r in ruleset.rules:
        values = sorted(pooled[_mirror_key(r.id)], reverse=True)
        if not values:
            rules.append(r)
            continue
        basis = values[min(drop_largest, len(values) - 1)]
        margin = step_mm * math.ceil((basis + slack_mm) / step_mm - 1e-9)
        rules.append(replace(r, margin_mm=float(margin)))
        figures[r.id] = {"n": len(values), "largest": values[0], "basis": basis, "margin_mm": margin}
    return replace(ruleset, rules=tuple(rules)), figures


def _mirror_key(rule_id: str) -> str:
    return rule_id.replace("_right", "_SIDE").replace("_left", "_SIDE")


def _fit(args) -> int:
    rules_path = Path(args.rules) if args.rules else packaged_rules_path()
    ruleset = load_rules(rules_path)
    cases = Dataset(args.data).split(args.fit_margins_on)[: args.limit]
    fitted, figures = fit_margins(list(_progress(cases, "margins")), ruleset, slack_mm=args.slack_mm)
    print(f"{'rule':42s} {'n':>4s} {'largest':>8s} {'basis':>8s} {'margin':>7s} {'was':>6s}")
    for old, new in zip(ruleset.rules, fitted.rules):
        f = figures.get(old.id)
        if f:
            print(f"{old.id:42s} {f['n']:4d} {f['largest']:8.1f} {f['basis']:8.1f} {new.margin_mm:7.1f} "
                  f"{old.margin_mm:6.1f}")
    if fitted == ruleset:
        print("Margins unchanged.")
        return 0
    if args.no_update:
        return 0
    meta = {k: v for k, v in fitted.meta.items() if k != "measurements"}
    meta["margin_basis"] = (
        f"margin_mm = distance by which {args.fit_margins_on}-split reference contours pass the rule's plane "
        f"(anchors from the same contours; pooled with the rule's left/right mirror; the {FIT_DROP_LARGEST} "
        f"largest left out as possible contouring errors) + {args.slack_mm:g} mm, rounded up to {FIT_STEP_MM:g} mm; "
        f"{len(cases)} cases of {Path(args.data).name} (measure_priors --fit-margins-on).")
    save_rules(replace(fitted, enabled_for={}, meta=meta), rules_path)
    print(f"Wrote {rules_path}; its per-engine selections were cleared: measure again with --engine.")
    return 0


# --- per case ---------------------------------------------------------------------------------------

def _case_data(case: Case, ds: Dataset, ruleset: RuleSet, args) -> _CaseData:
    ref_vol = case.load_labels()
    if args.pred_dir:
        from ..io import load_labels

        path = Path(args.pred_dir) / f"{case.case_id}.nii.gz"
        if not path.is_file():
            raise InputError(f"No prediction {path} for case {case.case_id}; segment it or drop --pred-dir.")
        pred_vol = load_labels(path)
        names = pred_vol.meta.get("label_names") or dict(ds.label_map.names)
    else:
        seg = _engine(args).segment(case.load_image())
        pred_vol, names = seg.labels, seg.names
        if args.save_pred:
            from ..io import save_labels

            Path(args.save_pred).mkdir(parents=True, exist_ok=True)
            save_labels(pred_vol, pred_vol.array, Path(args.save_pred) / f"{case.case_id}.nii.gz",
                        {0: "background", **names})
    if pred_vol.shape != ref_vol.shape or not np.allclose(pred_vol.affine, ref_vol.affine, atol=AFFINE_ATOL_MM):
        raise InputError(f"The prediction for {case.case_id} is not on its reference's grid; resample it first.")
    names = {int(k): v for k, v in names.items() if int(k) != 0 and v != "background"}
    pred = np.asarray(pred_vol.array)
    outcomes = evaluate_rules(pred, pred_vol.affine, names, ruleset)
    return _CaseData(case, pred, np.asarray(pred_vol.affine), {v: k for k, v in names.items()},
                     np.asarray(ref_vol.array), {rid: o.removed for rid, o in outcomes.items() if o.removed.size})


_ENGINE = {}


def _engine(args):
    key = (args.engine, args.model, args.threads)
    if key not in _ENGINE:
        from ..engines.registry import get_engine

        _ENGINE[key] = get_engine(args.engine, model=args.model, threads=args.threads)
    return _ENGINE[key]


def _score_all(data: list[_CaseData], rule_ids: list[str], tolerance_mm: float,
               organs: list[str] | None = None) -> list[OrganScore]:
    """Scores of every case with the given rules' removals applied (contoured organs only)."""
    out = []
    for d in data:
        pred = d.pred
        removed = [d.removed[r] for r in rule_ids if r in d.removed]
        if removed:
            pred = d.pred.copy(order="C")
            pred.reshape(-1)[np.concatenate(removed)] = 0
        todo = [(n, d.pred_ids.get(n), d.case.label_map.ids[n]) for n in d.case.organs
                if organs is None or n in organs]
        out += score_case(pred, d.ref, geometry.spacing_mm(d.affine), todo, tolerance_mm=tolerance_mm,
                          case=d.case.case_id)
    return out


# --- figures ----------------------------------------------------------------------------------------

def _rule_effect(rule, before: list[OrganScore], after: list[OrganScore], data: list[_CaseData]) -> dict:
    b = {s.case: s for s in before if s.organ == rule.organ}
    a = {s.case: s for s in after if s.organ == rule.organ}
    cases = [c for c in b if c in a and not math.isnan(b[c].dice)]
    d0 = np.array([b[c].dice for c in cases])
    d1 = np.array([a[c].dice for c in cases])
    j0 = np.array([b[c].jaccard for c in cases])
    j1 = np.array([a[c].jaccard for c in cases])
    h0 = np.array([b[c].hd95_mm for c in cases])
    h1 = np.array([a[c].hd95_mm for c in cases])
    fin = np.isfinite(h0) & np.isfinite(h1)
    fired = {d.case.case_id: int(d.removed[rule.id].size) for d in data if rule.id in d.removed}
    diff = d1 - d0
    return {
        "organ": rule.organ, "anchor": rule.anchor, "relation": rule.relation, "reference": rule.reference,
        "margin_mm": rule.margin_mm, "n": len(cases),
        "fired": sum(1 for c in cases if fired.get(c, 0) > 0),
        "voxels_removed": int(sum(fired.get(c, 0) for c in cases)),
        "better": int(np.count_nonzero(diff > 1e-12)), "worse": int(np.count_nonzero(diff < -1e-12)),
        "dice_before": _mean(d0), "dice_after": _mean(d1), "dice_delta": _mean(diff) if cases else 0.0,
        "jaccard_before": _mean(j0), "jaccard_after": _mean(j1),
        "jaccard_delta": _mean(j1 - j0) if cases else 0.0,
        "hd95_mm_delta": _mean(h1[fin] - h0[fin]) if fin.any() else math.nan,
        "wilcoxon_p": _wilcoxon(diff),
    }


def _summary(scores: list[OrganScore], organs: list[str]) -> dict:
    per = {}
    for o in organs:
        rows = [s for s in scores if s.organ == o]
        d = np.array([s.dice for s in rows])
        j = np.array([s.jaccard for s in rows])
        h = np.array([s.hd95_mm for s in rows])
        per[o] = {"n": int(np.count_nonzero(~np.isnan(d))), "dice": _mean(d), "jaccard": _mean(j),
                  "hd95_mm": _mean(h[np.isfinite(h)])}
    mean = {k: _mean(np.array([v[k] for v in per.values()])) for k in ("dice", "jaccard", "hd95_mm")}
    return {"organs": per, "mean": mean}


def _report(result: dict, ruleset: RuleSet) -> str:
    v = result["variants"]
    lines = [f"Anatomical priors, engine {result['engine']}, {result['cases']} {result['split']} cases "
             "(organs scored where contoured; mean over cases)", "",
             f"{'organ':14s} {'n':>3s}  {'Dice none':>9s} {'all':>7s} {'selected':>8s}   "
             f"{'Jacc none':>9s} {'all':>7s} {'selected':>8s}"]
    for o, s in v[NONE]["organs"].items():
        a, k = v[ALL]["organs"][o], v[SELECTED]["organs"][o]
        lines.append(f"{o:14s} {s['n']:3d}  {s['dice']:9.4f} {a['dice']:7.4f} {k['dice']:8.4f}   "
                     f"{s['jaccard']:9.4f} {a['jaccard']:7.4f} {k['jaccard']:8.4f}")
    m = {x: v[x]["mean"] for x in v}
    lines.append(f"{'mean':14s} {'':3s}  {m[NONE]['dice']:9.4f} {m[ALL]['dice']:7.4f} {m[SELECTED]['dice']:8.4f}   "
                 f"{m[NONE]['jaccard']:9.4f} {m[ALL]['jaccard']:7.4f} {m[SELECTED]['jaccard']:8.4f}")
    lines += ["", f"{'rule':42s} {'fired':>5s} {'+/-':>7s} {'dDice':>8s} {'dJacc':>8s} {'dHD95mm':>8s} "
              f"{'p':>6s}  kept"]
    for rid, e in result["rules"].items():
        lines.append(f"{rid:42s} {e['fired']:2d}/{e['n']:<2d} {e['better']:3d}/{e['worse']:<3d} "
                     f"{e['dice_delta']:+8.4f} {e['jaccard_delta']:+8.4f} {e['hd95_mm_delta']:+8.2f} "
                     f"{e['wilcoxon_p']:6.3f}  {'yes' if rid in result['selected'] else '-'}")
    return "\n".join(lines)


def _wilcoxon(diff: np.ndarray) -> float:
    diff = diff[np.abs(diff) > 1e-12]
    if diff.size == 0:
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(diff).pvalue)


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _round(x: float, digits: int = 4):
    return None if math.isnan(x) else round(x, digits)


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float):
        return None if math.isnan(o) else ("inf" if math.isinf(o) else o)
    return o


def _progress(items, engine: str):
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"priors {engine}", unit="case")


if __name__ == "__main__":
    sys.exit(main())
