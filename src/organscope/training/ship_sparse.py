"""The sparse model shipped after cross-validation (issue 14): a run that trained on every case
(`train_sparse --all-cases`) with the recipe the folds measured, exported with the settings chosen out of fold,
its card recording the folds' pooled out-of-fold figures as the estimate of its accuracy.

    python -m organscope.training.ship_sparse --run RUN --cv cv/sparse --data OPENKBP [--install]

The ONNX export, its integer first layer and the card's training record are those of a fold model
(`crossval.export_sparse_fold`); everything the folds chose is kept from the shipped card (logit bias and its
alpha, coarse-to-fine settings, working grid, the QC confidence threshold fitted on the folds' held-out organs).
No figure is measured on the 33 validation cases: they are training cases of this model; their out-of-fold
figure (each scored by a fold model that never saw it) is recorded for continuity.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
from pathlib import Path

from ..datasets import Dataset
from ..modelcard import MODELS_DIR
from .crossval import export_sparse_fold, pooled_scores, summary

SHIPPED = "sparse_openkbp"
IGNORED_SETTINGS = ("threads",)  # how many cores trained it changes nothing the folds measured
#: plan keys that only act while another is on: compared only where either side has that one on
DEPENDS_ON = {"elastic_mm": "elastic_fraction", "elastic_grid_mm": "elastic_fraction"}


def key_differences(what: str, ours: dict, theirs: dict, fold_name: str,
                    ignored=IGNORED_SETTINGS) -> list[tuple[str, str]]:
    """(line, key) for each key of one section (`what`: settings, plan...) where a run and a fold card differ.
    A key only one side records counts as equal when the other side's value is off (0, None, False): a key added
    after the folds trained (e.g. flip_fraction 0.0) is the behaviour they had. Keys that only act while another
    is on (DEPENDS_ON) count only where either side has that one on."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        if key in ignored:
            continue
        switch = DEPENDS_ON.get(key)
        if switch and not ours.get(switch) and not theirs.get(switch):
            continue
        a, b = ours.get(key), theirs.get(key)
        if a == b or (key not in ours and not b) or (key not in theirs and not a):
            continue
        out.append((f"{what}.{key}: run {a!r}, {fold_name} {b!r}", key))
    return out


def recipe_differences(run_dir: Path, cv_dir: Path) -> list[str]:
    """Where the run's training settings and sampling plan differ from those of the fold models whose pooled
    out-of-fold figure its card would carry (one line per key and fold card); empty when it is the same recipe
    (`key_differences`)."""
    settings = json.loads((run_dir / "settings.json").read_text()).get("settings") or {}
    plan = json.loads((run_dir / "data.json").read_text()).get("plan") or {}
    cards = sorted(cv_dir.glob("fold*/sparse_fold*.json"))
    if not cards:
        return [f"{cv_dir} holds no fold model card (fold*/sparse_fold*.json)"]
    out = []
    for card_path in cards:
        t = json.loads(card_path.read_text()).get("training") or {}
        for what, ours, theirs in (("settings", settings, t.get("settings") or {}),
                                   ("plan", plan, t.get("plan") or {})):
            out += [line for line, _ in key_differences(what, ours, theirs, card_path.parent.name)]
    return out


def out_of_fold_validation(cv_dir: Path, data_root: Path, engine: str = "sparse") -> dict:
    """The card's accuracy estimate: every fold's held-out patients pooled (mean Dice per organ and mean with its
    bootstrap interval), and the same restricted to the dataset's validation split."""
    folds, scores = pooled_scores(cv_dir)
    if len(folds) < 2:
        raise SystemExit(f"{cv_dir}: {len(folds)} scored fold(s); the estimate needs every fold")
    val_ids = {c.case_id for c in Dataset(data_root, require_files=False).split("validation")}
    pooled = summary(scores)
    return {"what": "out of fold: every patient scored by the fold model that never saw it (the same recipe "
                    "trained on the other folds' cases), pooled over the folds; Dice of segment() per contoured "
                    f"organ (python -m organscope.training.crossval {engine} --pool --out {cv_dir})",
            "cv_dir": str(cv_dir), "folds": [r["fold"] for r in folds], **pooled,
            "validation_split_out_of_fold": summary({c: v for c, v in scores.items() if c in val_ids}),
            "note": "this model trained on every case, the validation split's included: a figure measured on "
                    "them now would be in-sample"}


def ship_card(fold_card: dict, shipped: dict, validation: dict, command: str) -> dict:
    """The shipped card with this run's weights: training record, ONNX parity and quantization from the exported
    run (`fold_card`), everything chosen out of fold kept, and the previous model summarised."""
    card = dict(shipped)
    prev = shipped.get("training", {})
    training = dict(fold_card["training"])
    if prev.get("command") == command and prev.get("cases") == training["cases"] and "previous_model" in prev:
        previous = prev["previous_model"]  # the same model exported again: the one it replaced stays on record
    else:
        previous = {"data": prev.get("data"), "cases": len(prev.get("cases") or []), "date": shipped.get("date"),
                    "validation_mean_dice": shipped.get("validation", {}).get("mean_dice")}
        if "fine_tune" in prev:
            previous["fine_tuned"] = {k: prev["fine_tune"].get(k) for k in ("date", "command")}
    training.update(data=f"OpenKBP (Babier et al. 2021), all {len(training['cases'] or [])} cases (training and "
                         "validation splits)", command=command, previous_model=previous)
    card.update(name=SHIPPED, training=training, onnx_parity_max_abs_diff=fold_card["onnx_parity_max_abs_diff"],
                quantization=fold_card["quantization"], validation=validation,
                date=_dt.date.today().isoformat(),
                calibration_note="logit bias (alpha), coarse-to-fine settings and qc_min_confidence chosen out "
                                 "of fold on the five fold models of this recipe")
    return card


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="train_sparse --all-cases run folder")
    ap.add_argument("--cv", type=Path, required=True, help="the recipe's cross-validation folder (cv/sparse)")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the run trained on (OpenKBP)")
    ap.add_argument("--out", type=Path, default=Path("work/ship_sparse"))
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--install", action="store_true", help="copy the model and card into the package")
    a = ap.parse_args(argv)
    ds = Dataset(a.data, require_files=False)
    trained = json.loads((a.run / "data.json").read_text()).get("cases") or []
    missing = sorted({c.case_id for c in ds.cases} - set(trained))
    if missing:
        raise SystemExit(f"{a.run} did not train on every case of {a.data} ({len(missing)} missing, e.g. "
                         f"{missing[0]}): train it with train_sparse --all-cases")
    diffs = recipe_differences(a.run, a.cv)
    if diffs:
        raise SystemExit(f"{a.run} was not trained with the recipe of the folds in {a.cv}, so their out-of-fold "
                         f"figure does not describe it ({len(diffs)} difference(s), e.g. {diffs[0]})")
    onnx_path = export_sparse_fold(a.run, a.out, SHIPPED, checkpoint=a.checkpoint,
                                   check_cases=Dataset(a.data).split("validation")[:3])
    card_path = onnx_path.with_suffix(".json")
    shipped = json.loads((MODELS_DIR / f"{SHIPPED}.json").read_text())
    command = ("python -m organscope.training.train_sparse --resample-from OPENKBP --strong-augmentation "
               "--cut-fraction 0.3 --epochs 10 --weight-decay 1e-4 --threads 1 --all-cases --val VAL --run RUN; "
               f"python -m organscope.training.ship_sparse --run RUN --cv {a.cv} --data OPENKBP --install")
    card = ship_card(json.loads(card_path.read_text()), shipped, out_of_fold_validation(a.cv, a.data), command)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card["validation"][k] for k in ("mean_dice", "mean_dice_95ci", "cases")}))
    if a.install:
        install(onnx_path)


def install(onnx_path: Path) -> None:
    """Copy an exported model and its card (beside it) into the package."""
    for path in (onnx_path, onnx_path.with_suffix(".json")):
        shutil.copy2(path, MODELS_DIR / path.name)
    print(f"installed into {MODELS_DIR}")


if __name__ == "__main__":
    main()
