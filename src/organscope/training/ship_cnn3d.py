"""The cnn3d model shipped after cross-validation (issue 14): a run of the fold recipe on every case
(`train_cnn3d --all-cases`, with the fold runs' settings and patch plan), exported as the fold models are
(`crossval.export_cnn3d_fold`: the shipped card's grid, spacing, windows and largest-component setting; logit
offsets fitted on every sixth of its own training cases), its card recording the recipe's pooled out-of-fold
figures as the estimate of its accuracy.

    python -m organscope.training.ship_cnn3d --run RUN --cv cv/cnn3d_balanced --cache CACHE --data OPENKBP [--install]

Or a fine-tune of the shipped model on every case (`train_cnn3d --all-cases --init` the shipped ONNX file), which
no fold model describes: its estimate is a run of the same fine-tuning recipe on the training split, scored against
the shipped model on the validation patients neither saw (`crossval cnn3d --against-shipped --run`, its folder):

    python -m organscope.training.ship_cnn3d --run RUN --checked cv/cnn3d_finetune --cache CACHE --data OPENKBP

How long the run trained (`hours`, `steps`) may differ from the folds' (their step counts differ among
themselves, with the load of the machine): the difference is recorded in the card, not refused. Any other
setting or patch-plan difference is refused: the folds' figure would not describe the model. No figure is
measured on the 33 validation cases: they are training (or checkpoint-picking) cases of this model.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

from ..datasets import Dataset
from ..modelcard import MODELS_DIR
from .crossval import export_cnn3d_fold
from .ship_sparse import IGNORED_SETTINGS, install, key_differences, out_of_fold_validation

SHIPPED = "cnn3d_openkbp"
#: how long a run trained: may differ from the folds' (recorded in the card)
RUN_LENGTH = ("hours", "steps")
#: the previous card's entries that describe the previous weights only
STALE = ("variants", "known_limitations", "validation", "logit_offsets_fit")


def recipe_differences(run_dir: Path, cv_dir: Path) -> tuple[list[str], list[str]]:
    """(refused, recorded): where the run's settings and patch plan (RUN/settings.json) differ from those of
    the fold models in `cv_dir` (their cards' training.settings and training.patches), one line per key and
    fold card; the run-length keys are recorded, every other difference refused."""
    run = json.loads((run_dir / "settings.json").read_text())
    cards = sorted(cv_dir.glob("fold*/cnn3d_fold*.json"))
    if not cards:
        return [f"{cv_dir} holds no fold model card (fold*/cnn3d_fold*.json)"], []
    refused, recorded = [], []
    for card_path in cards:
        _sort_differences(run, json.loads(card_path.read_text()).get("training") or {}, card_path.parent.name,
                          refused, recorded)
    return refused, recorded


def _sort_differences(run: dict, theirs: dict, their_name: str, refused: list[str], recorded: list[str]) -> None:
    """A run's settings and patch plan (its settings.json) against another's (`theirs`: {"settings", "patches"}),
    each differing key's line appended to `recorded` for the run-length keys and to `refused` for the rest."""
    for what, ours, other in (("settings", run.get("settings") or {}, theirs.get("settings") or {}),
                              ("patches", run.get("plan") or {}, theirs.get("patches") or {})):
        for line, key in key_differences(what, ours, other, their_name, IGNORED_SETTINGS):
            (recorded if key in RUN_LENGTH else refused).append(line)


def ship_card(fold_card: dict, shipped: dict, validation: dict, command: str, recorded: list[str]) -> dict:
    """The shipped card with this run's weights: the exported run's training record, logit offsets and ONNX
    parity (`fold_card`), the previous card's geometry and settings, the out-of-fold estimate, and the previous
    model summarised."""
    training = dict(fold_card["training"])
    training.update(data=_all_cases_data(training), command=command, previous_model=_previous_model(shipped, command),
                    differences_from_folds=recorded)
    return _card_with_run(shipped, fold_card, training, validation, (
        f"Out-of-fold mean Dice of this recipe {validation['mean_dice']:.3f} "
        f"({validation['mean_dice_95ci'][0]:.3f}-{validation['mean_dice_95ci'][1]:.3f}) over "
        f"{validation['cases']} patients (folds {', '.join(map(str, validation['folds']))}), below the "
        "sparse engine's; the oesophagus is the least reliable organ "
        f"({validation['dice'].get('esophagus', float('nan')):.3f}): the recipe learns it in some "
        "runs late and weakly, in others not at all within its time (cv/README.md)."))


def _previous_model(shipped: dict, command: str) -> dict:
    """The model a new card replaces, summarised; when the same command is exported again, the one that command
    replaced first stays on record."""
    prev = shipped.get("training", {})
    if prev.get("command") == command and "previous_model" in prev:
        return prev["previous_model"]
    val = shipped.get("validation") or {}
    return {"data": prev.get("data"), "date": shipped.get("date"), "steps": prev.get("steps"),
            "minutes": prev.get("minutes"),
            "validation_mean_dice": val.get("mean_dice", (val.get("mean") or {}).get("dice"))}


def _all_cases_data(training: dict) -> str:
    n_train, n_pick = len(training["cases"] or []), len(training.get("checkpoint_cases") or [])
    return (f"OpenKBP (Babier et al. 2021), all {n_train + n_pick} cases (training and validation splits): "
            f"{n_train} trained on, {n_pick} picked the checkpoint")


def _card_with_run(shipped: dict, fold_card: dict, training: dict, validation: dict, estimate_line: str) -> dict:
    """The previous card (less what described its weights only) with the exported run's weights-dependent fields,
    its training record, its estimate and the known limitations (the estimate's line, then how it trained)."""
    card = {k: v for k, v in shipped.items() if k not in STALE}
    card.update(name=SHIPPED, training=training, onnx_parity_max_abs_diff=fold_card["onnx_parity_max_abs_diff"],
                logit_offsets=fold_card["logit_offsets"], logit_offsets_fit=fold_card["logit_offsets_fit"],
                largest_component=fold_card.get("largest_component", shipped.get("largest_component")),
                validation=validation, date=_dt.date.today().isoformat(),
                calibration_note="largest-component setting kept from the previous card; logit offsets fitted on "
                                 "every sixth of this model's training cases; nothing chosen on the validation "
                                 "cases, which it trained on",
                known_limitations=[estimate_line, _training_limitation(training)])
    return card


def _training_limitation(training: dict) -> str:
    """How long the run trained and whether its checkpoint-selection Dice was still rising at its last check,
    read from its training record."""
    history = [h for h in training.get("history") or [] if h.get("val_mean_dice") is not None]
    warm = any("warm_start_from" in h for h in training.get("history") or [])
    text = (f"Trained {training.get('minutes', 0) / 60:.1f} h on a CPU ({training.get('steps')} steps"
            + (", warm-started" if warm else ", from scratch") + ")")
    if len(history) >= 2:
        last, before = history[-1]["val_mean_dice"], history[-2]["val_mean_dice"]
        text += (f"; its checkpoint-selection Dice was {'still rising' if last > before else 'not rising'} at the "
                 f"end ({before:.3f} -> {last:.3f})")
    return text + "."


def warm_start_of(history: list) -> str | None:
    """The model a run was warm-started from (its training history's first entry), or None for a run from scratch."""
    return (history or [{}])[0].get("warm_start_from")


def fine_tune_differences(run_dir: Path, checked: dict) -> tuple[list[str], list[str]]:
    """(refused, recorded): where an all-cases fine-tune (RUN/settings.json) differs from the training-split run
    whose check against the shipped model stands for it (`checked`: crossval's run_against_shipped.json); the
    run-length keys are recorded, every other difference refused."""
    refused, recorded = [], []
    _sort_differences(json.loads((run_dir / "settings.json").read_text()), checked, "the checked run", refused,
                      recorded)
    return refused, recorded


def fine_tune_card(fold_card: dict, shipped: dict, checked: dict, checked_dir: Path, command: str,
                   recorded: list[str]) -> dict:
    """The shipped card for a fine-tune of the shipped model on every case: the exported run's training record,
    offsets and ONNX parity, the previous card's geometry and settings, the previous model summarised, and as its
    estimate the checked training-split run's paired figures against the previous model."""
    training = dict(fold_card["training"])
    training.update(data=_all_cases_data(training) + "; warm-started from the previous shipped model (below)",
                    command=command, previous_model=_previous_model(shipped, command),
                    differences_from_checked_run=recorded)
    run_model, before, diff = checked["run_model"], checked["shipped"], checked["run_minus_shipped"]
    validation = {
        "what": f"estimated: the same fine-tuning recipe run on the training split (checkpoint picked on "
                f"{len(checked.get('checkpoint_cases') or []) or 'some'} validation cases), its model scored on the "
                f"{checked['cases']} validation-split patients neither it nor the previous model saw, paired against "
                "the previous model (python -m organscope.training.crossval cnn3d --against-shipped --run RUN "
                f"--out {checked_dir}); Dice of segment() per contoured organ",
        "estimate_from": str(checked_dir), "cases": checked["cases"], "mean_dice": run_model["mean_dice"],
        "mean_dice_95ci": run_model["mean_dice_95ci"], "dice": run_model["dice"],
        "previous_model_mean_dice": before["mean_dice"], "minus_previous_model": diff,
        "note": "this model trained on every case, the validation split's included: a figure measured on them now "
                "would be in-sample"}
    return _card_with_run(shipped, fold_card, training, validation, (
        f"Estimated mean Dice {run_model['mean_dice']:.3f} ({run_model['mean_dice_95ci'][0]:.3f}-"
        f"{run_model['mean_dice_95ci'][1]:.3f}) from the same recipe on the training split, "
        f"{diff['difference']:+.3f} ({diff['difference_95ci'][0]:+.3f} to {diff['difference_95ci'][1]:+.3f})"
        f" against the previous model on {checked['cases']} unseen patients; below the sparse engine's. "
        "The oesophagus and larynx are the weakest organs."))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="train_cnn3d --all-cases run folder")
    evidence = ap.add_mutually_exclusive_group(required=True)
    evidence.add_argument("--cv", type=Path, help="the recipe's cross-validation folder (cv/cnn3d_balanced)")
    evidence.add_argument("--checked", type=Path,
                          help="for a fine-tune of the shipped model: the folder of the same recipe's training-split "
                               "run checked against the shipped model (crossval cnn3d --against-shipped --run)")
    ap.add_argument("--cache", type=Path, required=True, help="the run's training cache (for the logit offsets)")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the run trained on (OpenKBP)")
    ap.add_argument("--out", type=Path, default=Path("work/ship_cnn3d"))
    ap.add_argument("--checkpoint", default="best.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true", help="copy the model and card into the package")
    a = ap.parse_args(argv)
    ds = Dataset(a.data, require_files=False)
    data = json.loads((a.run / "data.json").read_text())
    seen = set(data.get("cases") or []) | set(data.get("checkpoint_cases") or [])
    missing = sorted({c.case_id for c in ds.cases} - seen)
    if missing or data.get("fold") is not None:
        raise SystemExit(f"{a.run} did not train on every case of {a.data} ({len(missing)} missing"
                         + (f", e.g. {missing[0]}" if missing else f", fold {data.get('fold')} left out")
                         + "): train it with train_cnn3d --all-cases")
    if a.checked is not None:
        return _ship_fine_tune(a)
    refused, recorded = recipe_differences(a.run, a.cv)
    if refused:
        raise SystemExit(f"{a.run} was not trained with the recipe of the folds in {a.cv}, so their out-of-fold "
                         f"figure does not describe it ({len(refused)} difference(s), e.g. {refused[0]})")
    settings = json.loads((a.run / "settings.json").read_text())
    command = ("python -m organscope.training.train_cnn3d --cache CACHE --run RUN --all-cases"
               + (" --balance-organs" if (settings.get("plan") or {}).get("balance_organs") else "")
               + f" --hours {settings['settings']['hours']} --lr {settings['settings']['lr']} --val-every "
               f"{settings['settings']['val_every']} --threads 1; python -m organscope.training.ship_cnn3d --run RUN "
               f"--cv {a.cv} --cache CACHE --data OPENKBP --install")
    validation = out_of_fold_validation(a.cv, a.data, "cnn3d")
    _export_and_install(a, lambda run_card, shipped: ship_card(run_card, shipped, validation, command, recorded),
                        ("mean_dice", "mean_dice_95ci", "cases", "folds"), recorded)


def _export_and_install(a, make_card, shown: tuple[str, ...], recorded: list[str]) -> None:
    """Export the run (export_cnn3d_fold) to --out, write the card `make_card(run's card, shipped card)` over its
    card, print the `shown` validation figures and the recorded differences, and with --install copy both into
    the package."""
    onnx_path = export_cnn3d_fold(a.run, a.out, SHIPPED, a.cache, checkpoint=a.checkpoint, threads=a.threads)
    card_path = onnx_path.with_suffix(".json")
    shipped = json.loads((MODELS_DIR / f"{SHIPPED}.json").read_text())
    card = make_card(json.loads(card_path.read_text()), shipped)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card["validation"][k] for k in shown}))
    for line in recorded:
        print(f"recorded, not refused: {line}")
    if a.install:
        install(onnx_path)


def _ship_fine_tune(a) -> None:
    """ship_cnn3d --checked: an all-cases fine-tune of the shipped model, estimated by its checked training-split
    twin; refused unless both are warm restarts of the shipped model with the same recipe."""
    import torch

    path = a.checked / "run_against_shipped.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run crossval cnn3d --against-shipped --run RUN --out {a.checked} first")
    checked = json.loads(path.read_text())
    shipped_file = f"{SHIPPED}.onnx"
    history = torch.load(a.run / "last.pt", weights_only=False)["state"]["history"]
    for what, start in ((str(a.run), warm_start_of(history)), (f"the checked run ({checked.get('run')})",
                                                                checked.get("warm_start_from"))):
        if start is None or Path(start).name != shipped_file:
            raise SystemExit(f"{what} is not a warm restart of the shipped {shipped_file} (it started from "
                             f"{start or 'scratch'}), so the check does not describe a fine-tune of it")
    if checked.get("checkpoint", "best.pt") != a.checkpoint:
        raise SystemExit(f"the checked run was scored at its {checked.get('checkpoint', 'best.pt')}, this run would "
                         f"ship its {a.checkpoint}: pick the same checkpoint (--checkpoint)")
    refused, recorded = fine_tune_differences(a.run, checked)
    if refused:
        raise SystemExit(f"{a.run} was not trained with the recipe of the checked run in {a.checked} "
                         f"({len(refused)} difference(s), e.g. {refused[0]})")
    s = json.loads((a.run / "settings.json").read_text())
    command = (f"python -m organscope.training.train_cnn3d --cache CACHE --run RUN --all-cases --init "
               f"src/organscope/models/{shipped_file}"
               + (" --balance-organs" if (s.get("plan") or {}).get("balance_organs") else "")
               + f" --hours {s['settings']['hours']} --lr {s['settings']['lr']} --threads 1; python -m "
               f"organscope.training.ship_cnn3d --run RUN --checked {a.checked} --cache CACHE --data OPENKBP "
               + (f"--checkpoint {a.checkpoint} " if a.checkpoint != "best.pt" else "") + "--install")
    _export_and_install(a, lambda run_card, shipped: fine_tune_card(run_card, shipped, checked, a.checked, command,
                                                                    recorded),
                        ("mean_dice", "mean_dice_95ci", "cases", "previous_model_mean_dice"), recorded)


if __name__ == "__main__":
    main()
