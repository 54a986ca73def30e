"""Out-of-fold evaluation (issue 14): a model trained on one fold's training cases (training/folds.py) is exported
and scored on that fold's held-out cases, per case and organ, so that settings and ensemble weights can be chosen
on out-of-fold predictions of every case instead of on the 33 validation cases.

    python -m organscope.training.crossval sparse --fold 0 --run RUN --data OPENKBP --out cv/sparse
    python -m organscope.training.crossval cnn3d --fold 0 --run RUN --data OPENKBP --cache CACHE --out cv/cnn3d
    python -m organscope.training.crossval cascade --fold 0 --run 'RUN_{group}' --heatmap HEATMAP_RUN --data OPENKBP \
        --cache CACHE --out cv/cascade
    python -m organscope.training.crossval sparse --pool --out cv/sparse
    python -m organscope.training.crossval sparse --sweep-alpha 0,0.25,0.5,0.75,1 --data OPENKBP --out cv/sparse
    python -m organscope.training.crossval sparse --sweep-segmentation majority=0,14,20 --data OPENKBP --out cv/sparse
    python -m organscope.training.crossval sparse --confidence-threshold --out cv/sparse
    python -m organscope.training.crossval ensemble --members sparse=cv/sparse,cnn3d=cv/cnn3d --data OPENKBP \
        --out cv/ensemble

writes OUT/fold0/ENGINE_fold0.onnx (+ card) and OUT/fold0/scores.json: per held-out case, per contoured organ, Dice
of the engine's own label map (no anatomy check, no priors) and the organ's confidence. A sparse fold's card copies
the shipped model's calibration (logit bias, segmentation settings; the bias's strength is chosen out of fold by
--sweep-alpha); a cnn3d fold's card gets logit offsets fitted on the fold's own training cases. The ensemble's
weights are swept on the folds every member has scored (`sweep_weights`).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..metrics.overlap import confusion, dice
from ..modelcard import MODELS_DIR


def export_sparse_fold(run_dir: Path, out_dir: Path, name: str, *, checkpoint: str = "last.pt",
                       check_cases=None) -> Path:
    """RUN/checkpoint -> OUT/name.onnx (integer first layer, as shipped) with a card: the shipped card's classes,
    pattern, calibration and segmentation settings, this run's training record. `check_cases` (dataset cases):
    record the integer layer's largest logit difference from float32 on their descriptors, as a shipped card does."""
    from .export import export_onnx, load_net
    from .quantize import quantize_first_layer

    hist = json.loads(((run_dir / "settings.json") if (run_dir / "settings.json").exists()
                       else (run_dir / "history.json")).read_text())
    s = hist["settings"]
    shipped = json.loads((MODELS_DIR / "sparse_openkbp.json").read_text())
    net = load_net(run_dir / checkpoint, hist["n_in"], len(shipped["classes"]), width=s["width"],
                   n_blocks=s["n_blocks"])
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path, onnx_path = out_dir / f"{name}_float32.onnx", out_dir / f"{name}.onnx"
    err = export_onnx(net, float_path)
    quant = quantize_first_layer(float_path, onnx_path)
    if check_cases:
        from .sparse_pipeline import quantization_check

        quant["max_abs_logit_diff_vs_float32"] = quantization_check(float_path, onnx_path, check_cases)
    float_path.unlink()
    data = json.loads((run_dir / "data.json").read_text())
    keep = ("engine", "body_region", "format", "classes", "n_inputs", "input", "output", "pattern", "logit_bias",
            "segmentation", "min_spacing_mm", "working_spacing_mm")
    card = {k: shipped[k] for k in keep if k in shipped}
    card.update(name=name, onnx_parity_max_abs_diff=err, quantization=quant,
                training={"cases": data.get("cases"), "plan": data.get("plan"), "init_onnx": data.get("init_onnx"),
                          "settings": s, "checkpoint": checkpoint,
                          "history": [{k: v for k, v in h.items() if k != "class_fraction"}
                                      for h in hist["history"]]},
                calibration_note="logit bias and segmentation settings copied from sparse_openkbp (not refitted "
                                 "on this fold)")
    onnx_path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return onnx_path


def export_cnn3d_fold(run_dir: Path, out_dir: Path, name: str, cache: Path, *, checkpoint: str = "best.pt",
                      threads: int = 2) -> Path:
    """RUN/checkpoint of `train_cnn3d --fold K` -> OUT/name.onnx with a card: the shipped card's grid, spacing,
    windows and largest-component setting; logit offsets fitted (as cnn3d_pipeline does) on every sixth of the
    fold's own training cases, never on its held-out ones; this run's training record."""
    from .cnn3d_data import N_SPECIAL
    from .cnn3d_pipeline import export, load_run
    from .logit_offsets import cached_samples, fit_offsets

    net, run, state = load_run(run_dir, checkpoint)
    data = json.loads((run_dir / "data.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    err = export(net, onnx_path)
    shipped = json.loads((MODELS_DIR / "cnn3d_openkbp.json").read_text())
    keep = ("engine", "body_region", "format", "classes", "network_classes", "grid", "spacing_mm", "spacing_note",
            "input", "windows_hu", "output", "largest_component")
    card = {k: shipped[k] for k in keep if k in shipped}
    samples = cached_samples(onnx_path, cache, threads=threads, cases=data["cases"])
    card.update(name=name, onnx_parity_max_abs_diff=err,
                logit_offsets=[float(v) for v in fit_offsets(samples, N_SPECIAL)],
                logit_offsets_fit={"cases": f"every sixth of this run's training cases ({len(samples)})"},
                training={"fold": data.get("fold"), "cases": data["cases"],
                          "checkpoint_cases": data.get("checkpoint_cases"), "settings": run["settings"],
                          "patches": run["plan"], "checkpoint": checkpoint,
                          "steps": state["step"], "minutes": round(state["elapsed_s"] / 60, 1),
                          "history": state["history"]},
                calibration_note="largest-component setting copied from cnn3d_openkbp (not refitted on this fold)")
    onnx_path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return onnx_path


def export_cascade_fold(runs: dict[str, Path], heatmap_dir: Path, out_dir: Path, name: str, cache: Path, *,
                        checkpoint: str = "best.pt", threads: int = 2) -> Path:
    """The group runs of `train_cascade --fold K` (group -> run folder) and the heat-map run of `train_heatmap
    --fold K` (its folder: heatmap_openkbp.onnx + card) -> OUT/name.json with the group networks and the heat-map
    model beside it: the shipped card's grid, spacing, localiser, largest-component and mirror settings; each
    group's logit offsets (where the shipped card has them) fitted on every sixth of that group's own training
    cases. Every run must be of the same fold. Returns the card's path."""
    from .cascade_pipeline import load_group
    from .cnn3d_data import N_SPECIAL
    from .cnn3d_pipeline import export
    from .logit_offsets import cached_samples, fit_offsets

    shipped = json.loads((MODELS_DIR / "cascade_openkbp.json").read_text())
    if set(runs) != set(shipped["groups"]):
        raise SystemExit(f"a cascade fold needs one run per group: {', '.join(shipped['groups'])}")
    datas = {g: json.loads((r / "data.json").read_text()) for g, r in runs.items()}
    heat_data = json.loads((heatmap_dir / "data.json").read_text())
    folds = {d.get("fold") for d in datas.values()} | {heat_data.get("fold")}
    if len(folds) != 1 or None in folds:
        raise SystemExit(f"the group and heat-map runs must all be of one cross-validation fold (found {folds})")
    out_dir.mkdir(parents=True, exist_ok=True)
    heat_name = f"{name}_heatmap.onnx"
    shutil.copy2(heatmap_dir / "heatmap_openkbp.onnx", out_dir / heat_name)
    shutil.copy2(heatmap_dir / "heatmap_openkbp.json", (out_dir / heat_name).with_suffix(".json"))
    groups = {}
    for g, run_dir in runs.items():
        net, run, state = load_group(run_dir, checkpoint)
        onnx_path = out_dir / f"{name}_{g}.onnx"
        err = export(net, onnx_path)
        spec = dict(shipped["groups"][g], file=onnx_path.name, crop=[int(v) for v in run["crop"]],
                    onnx_parity_max_abs_diff=err)
        if shipped["groups"][g].get("logit_offsets") is not None:
            samples = cached_samples(onnx_path, cache, threads=threads, group_organs=run["organs"], crop=spec["crop"],
                                     cases=datas[g]["cases"])
            spec["logit_offsets"] = [float(v) for v in fit_offsets(samples, N_SPECIAL)]
        spec["training"] = {"fold": datas[g]["fold"], "cases": datas[g]["cases"],
                            "checkpoint_cases": datas[g]["checkpoint_cases"], "settings": run["settings"],
                            "init": run["init"], "checkpoint": checkpoint, "steps": state["step"],
                            "minutes": round(state["elapsed_s"] / 60, 1), "history": state["history"]}
        groups[g] = spec
    keep = ("engine", "body_region", "format", "classes", "grid", "spacing_mm", "spacing_note", "windows_hu",
            "margin_vox", "input", "output", "localizer", "largest_component", "mirror_tta")
    card = {k: shipped[k] for k in keep if k in shipped}
    card.update(name=name, groups=groups, heatmap_model=heat_name, fold=folds.pop(),
                logit_offsets_fit={"cases": "every sixth of each group's training cases in the fold, the crop "
                                            "around its true group box"},
                calibration_note="localiser, largest-component and mirror settings copied from cascade_openkbp "
                                 "(not refitted on this fold)")
    card_path = out_dir / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path


def prior_bias(alpha: float) -> np.ndarray:
    """The sparse engine's logit bias for prior-correction strength `alpha`: alpha * log(body prior / training
    prior) per class, the priors of the shipped card's calibration (sparse_pipeline: 0 = none, 1 = full)."""
    cal = json.loads((MODELS_DIR / "sparse_openkbp.json").read_text())["calibration"]
    return (alpha * np.log(np.asarray(cal["body_prior"]) / np.asarray(cal["train_prior"]))).astype(np.float32)


def score_fold(onnx_path: Path, data_root: Path, cases: list[str], *, threads: int = 2,
               logit_bias: np.ndarray | None = None, segmentation: dict | None = None,
               bias_delta: dict[str, float] | None = None, mirror_weight: float = 0.0, quiet: bool = False) -> dict:
    """Per held-out case: {organ: {"dice", "confidence"}} for the contoured organs, and seconds. `logit_bias`:
    instead of the card's; `segmentation`: SegmentSettings fields that replace the card's; `bias_delta`: added to
    the logit bias of those classes; `mirror_weight`: test-time mirror averaging (see `mirror_averaged`)."""
    from dataclasses import replace

    from ..engines.sparse import SparseEngine, SparseModel

    model = SparseModel.load(onnx_path, threads=threads)
    if logit_bias is not None:
        model.logit_bias = np.asarray(logit_bias, np.float32)
    for name, delta in (bias_delta or {}).items():
        model.logit_bias[model.classes.index(name)] += delta
    settings = replace(model.card.segmentation, **(segmentation or {}))
    eng = SparseEngine(model=model, settings=settings)
    if mirror_weight:
        mirror_averaged(model, mirror_weight)
        eng._click = None  # the compiled few-point path reads the network itself: every point through predict
    return score_cases(eng, data_root, cases, quiet=quiet)


def mirror_averaged(model, weight: float):
    """Test-time mirror averaging, an out-of-fold experiment rather than an engine setting: `model.predict`
    (descriptors -> probabilities) replaced by (1 - weight) p(d) + weight p'(d), p' the probabilities of the point
    in the left-right mirrored scan (the descriptor's samples mirrored, `Pattern.mirror_index`) with each lateral
    organ's class swapped with its twin's. Returns the model."""
    from ..organs import lateral_twin

    cols = model.pattern.mirror_index()
    classes = list(model.classes)
    twins = np.array([classes.index(lateral_twin(c)) if lateral_twin(c) in classes else i
                      for i, c in enumerate(classes)])
    plain = model.predict

    def predict(descriptors: np.ndarray) -> np.ndarray:
        mirrored = plain(np.ascontiguousarray(descriptors[:, cols]))[:, twins]
        return (1.0 - weight) * plain(descriptors) + weight * mirrored

    model.predict = predict
    return model


def score_cases(eng, data_root: Path, cases: list[str], *, quiet: bool = False) -> dict:
    """Per case: {organ: {"dice", "confidence"}} for the contoured organs of the engine's own label map (no
    anatomy check, no priors), and seconds."""
    ds = Dataset(data_root)
    by_id = {c.case_id: c for c in ds.cases}
    ids = {n: i for i, n in enumerate(eng.classes)}
    out = {}
    for cid in cases:
        case = by_id[cid]
        vol, lab = case.load_image(), case.load_labels().array
        t = time.perf_counter()
        seg = eng.segment(vol)
        sec = time.perf_counter() - t
        organs = _organ_scores(seg, lab, case.organs, ids, ds.label_map.ids)
        out[cid] = {"organs": organs, "seconds": round(sec, 3)}
        if not quiet:
            print(cid, {o: r["dice"] for o, r in organs.items()}, flush=True)
    return out


def sweep_alpha(out_dir: Path, data_root: Path, alphas, *, threads: int = 2) -> dict:
    """Out-of-fold choice of the prior-correction strength: every fold model scored so far under `out_dir`
    (foldK/sparse_foldK.onnx + scores.json) re-scored on its own held-out cases with the logit bias of each alpha;
    per alpha, the pooled summary over all those cases. Writes OUT/sweep_alpha.json, reusing the folds already
    swept there (by fold and alpha)."""
    variants = {f"{alpha:g}": {"logit_bias": prior_bias(alpha)} for alpha in alphas}
    return _sweep(out_dir, data_root, variants, "sweep_alpha.json", threads=threads)


def sweep_segmentation(out_dir: Path, data_root: Path, name: str, values, *, threads: int = 2) -> dict:
    """Out-of-fold choice of one coarse-to-fine setting (a SegmentSettings field, e.g. majority): every fold model
    re-scored on its own held-out cases with each value (the card's other settings and logit bias), pooled per
    value into OUT/sweep_segmentation.json (keys "name=value"), reusing what was swept there before."""
    from ..engines.sparse.card import _SETTING_PARSERS

    if name not in _SETTING_PARSERS or name == "batch":
        raise SystemExit(f"--sweep-segmentation: {name!r} is not a segmentation setting "
                         f"(one of {', '.join(k for k in _SETTING_PARSERS if k != 'batch')})")
    variants = {}
    for v in values:
        parsed = _SETTING_PARSERS[name](v)
        variants[f"{name}={json.dumps(parsed)}"] = {"segmentation": {name: parsed}}  # a tuple dumps as a list
    return _sweep(out_dir, data_root, variants, "sweep_segmentation.json", threads=threads)


def sweep_organ_bias(out_dir: Path, data_root: Path, organ: str, deltas, *, threads: int = 2) -> dict:
    """Out-of-fold check of one organ's decision threshold: every fold model re-scored on its own held-out cases
    with `delta` added to that organ's logit bias (a Dice-optimal threshold need not be the argmax), pooled per
    value into OUT/sweep_organ_bias.json (keys "organ+delta")."""
    variants = {f"{organ}{d:+g}": {"bias_delta": {organ: float(d)}} for d in deltas}
    return _sweep(out_dir, data_root, variants, "sweep_organ_bias.json", threads=threads)


def sweep_mirror(out_dir: Path, data_root: Path, weights, *, threads: int = 2) -> dict:
    """Out-of-fold check of test-time mirror averaging (`mirror_averaged`) with each weight, pooled per weight into
    OUT/sweep_mirror.json (keys "mirror=w")."""
    variants = {f"mirror={w:g}": {"mirror_weight": float(w)} for w in weights}
    return _sweep(out_dir, data_root, variants, "sweep_mirror.json", threads=threads)


def _sweep(out_dir: Path, data_root: Path, variants: dict, filename: str, *, threads: int) -> dict:
    """Every fold model scored so far under `out_dir` re-scored on its own held-out cases once per variant
    (score_fold keyword arguments, by key); per key, the pooled summary over all folds. Writes OUT/filename,
    reusing the (fold, key) pairs already there."""
    path = Path(out_dir) / filename
    done = json.loads(path.read_text()) if path.exists() else {"folds": {}}
    for scores_path in sorted(Path(out_dir).glob("fold*/scores.json")):
        r = json.loads(scores_path.read_text())
        onnx_path = scores_path.parent / f"sparse_fold{r['fold']}.onnx"
        per_fold = done["folds"].setdefault(str(r["fold"]), {})
        for key, kwargs in variants.items():
            if key not in per_fold:
                t = time.perf_counter()
                per_fold[key] = score_fold(onnx_path, data_root, r["held_out"], threads=threads, quiet=True,
                                           **kwargs)
                print(f"fold {r['fold']} {key}: {summary(per_fold[key])['mean_dice']:.4f} "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
                path.write_text(json.dumps(done) + "\n")
    keys = sorted({k for f in done["folds"].values() for k in f}, key=_sweep_order)
    card = {cid: v for scores in Path(out_dir).glob("fold*/scores.json")
            for cid, v in json.loads(scores.read_text())["cases"].items()}
    done["pooled"], done["minus_card"] = {}, {}
    for key in keys:
        if all(key in f for f in done["folds"].values()):
            cases = {cid: v for f in done["folds"].values() for cid, v in f[key].items()}
            done["pooled"][key] = summary(cases)
            # paired against the fold models as exported (the card's settings), on the same patients
            done["minus_card"][key] = paired_difference(cases, card)
    done["folds_swept"] = sorted(done["folds"], key=int)
    path.write_text(json.dumps(done) + "\n")
    return {"folds": done["folds_swept"], "pooled": done["pooled"], "minus_card": done["minus_card"]}


def _sweep_order(key: str):
    """Alphas by value, settings by name then value."""
    try:
        return (0, "", float(key))
    except ValueError:
        name, _, value = key.partition("=")
        return (1, name, value)


def summary(scores: dict) -> dict:
    """Mean Dice per organ over the cases contouring it, the mean over organs, and 95 % intervals (bootstrap over
    cases, 2000 draws, seed 0) of that mean."""
    organs = sorted({o for r in scores.values() for o in r["organs"]})
    ids = list(scores)
    means = _organ_means(scores, ids, organs)
    rng = np.random.default_rng(0)
    boot = [_mean_dice(scores, [ids[i] for i in rng.integers(0, len(ids), len(ids))], organs) for _ in range(2000)]
    return {"dice": {o: round(v, 4) for o, v in means.items()}, "mean_dice": round(float(np.mean(list(means.values()))), 4),
            "mean_dice_95ci": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
            "cases": len(ids)}


def paired_difference(a: dict, b: dict) -> dict:
    """Mean Dice (mean over organs) of scores `a` minus that of `b` on the same cases, with a 95 % interval by
    bootstrap over cases (2000 draws, seed 0; both sides resampled alike)."""
    ids = sorted(set(a) & set(b))
    organs = sorted({o for r in a.values() for o in r["organs"]})

    def diff(pick):
        return _mean_dice(a, pick, organs) - _mean_dice(b, pick, organs)

    rng = np.random.default_rng(0)
    boot = [diff([ids[i] for i in rng.integers(0, len(ids), len(ids))]) for _ in range(2000)]
    return {"difference": round(float(diff(ids)), 4), "difference_95ci": [round(float(np.percentile(boot, 2.5)), 4),
            round(float(np.percentile(boot, 97.5)), 4)], "cases": len(ids)}


def _mean_dice(scores: dict, pick, organs) -> float:
    """The mean over organs of their mean Dice over the picked cases (`_organ_means`)."""
    return float(np.mean(list(_organ_means(scores, pick, organs).values())))


def _organ_means(scores: dict, pick, organs) -> dict:
    """Per organ, the mean Dice over the picked cases that contour it (organs no picked case contours left out)."""
    out = {}
    for o in organs:
        v = [scores[c]["organs"][o]["dice"] for c in pick if o in scores[c]["organs"]
             and scores[c]["organs"][o]["dice"] is not None]
        if v:
            out[o] = float(np.mean(v))
    return out


def pooled_scores(out_dir: Path) -> tuple[list[dict], dict]:
    """(each fold's scores.json, their per-case scores as one set): every fold scored so far under `out_dir`
    (foldK/scores.json); each case must be held out by exactly one fold."""
    folds, scores = [], {}
    for path in sorted(Path(out_dir).glob("fold*/scores.json")):
        r = json.loads(path.read_text())
        if set(r["cases"]) & set(scores):
            raise SystemExit(f"{path}: a case is held out by two folds")
        folds.append(r)
        scores.update(r["cases"])
    if not scores:
        raise SystemExit(f"no foldK/scores.json under {out_dir}")
    return folds, scores


def against_shipped(engine: str, out_dir: Path, data_root: Path, *, threads: int = 2) -> dict:
    """The shipped model of `engine` against the fold models under `out_dir`, paired, on the validation-split
    patients the folds held out: patients that neither saw when the shipped model trained on the training split
    only (as cnn3d and the cascade did). Answers whether a recipe's model would be better than the one shipped
    before it replaces it."""
    from ..engines.registry import get_engine

    unseen = unseen_by_shipped(engine, data_root)
    folds, scores = pooled_scores(out_dir)
    cases = sorted(c for c in scores if c in unseen)
    if not cases:
        raise SystemExit(f"no validation-split patient held out by the folds under {out_dir}")
    theirs = score_cases(get_engine(engine, threads=threads), data_root, cases, quiet=True)
    ours = {c: scores[c] for c in cases}
    return {"what": f"the shipped {engine} model and the fold models under {out_dir} on the validation-split "
                    "patients the folds held out (each scored by the fold model that held it out), paired",
            "folds": [r["fold"] for r in folds], "cases": len(cases), "fold_models": summary(ours),
            "shipped": summary(theirs), "fold_models_minus_shipped": paired_difference(ours, theirs)}


def unseen_by_shipped(engine: str, data_root: Path) -> set[str]:
    """The patients the shipped model of `engine` never trained on: the validation split, less any case its card
    lists as a training case (a model trained on every case, as the sparse one, lists them all)."""
    from ..engines.registry import default_model

    return unseen_by_model(json.loads((MODELS_DIR / f"{default_model(engine)}.json").read_text()), data_root)


def unseen_by_model(card: dict, data_root: Path) -> set[str]:
    """The validation-split patients a model (its card) neither trained on nor picked its checkpoint with: the
    split less the cases its card's training record lists (`cases`, `checkpoint_cases`)."""
    training = card.get("training") or {}
    seen = set(training.get("cases") or []) | set(training.get("checkpoint_cases") or [])
    return {c.case_id for c in Dataset(data_root, require_files=False).split("validation")} - seen


def run_against_shipped(run_dir: Path, out_dir: Path, data_root: Path, cache: Path, *,
                        checkpoint: str = "best.pt", name: str = "cnn3d_run", threads: int = 2) -> dict:
    """A cnn3d run on the training split (`train_cnn3d` without --fold or --all-cases, e.g. a warm restart of the
    shipped model, `--init` its ONNX file) against the shipped cnn3d, paired, on the validation-split patients
    neither trained on and the run did not pick its checkpoint with. Answers whether a recipe improves the shipped
    model on new patients before the same recipe is run on every case and shipped. The run is exported as the
    fold models are (`export_cnn3d_fold`: OUT/name.onnx with its card; offsets fitted on its training cases)."""
    from ..engines.registry import get_engine

    data = json.loads((Path(run_dir) / "data.json").read_text())
    if data.get("fold") is not None or data.get("all_cases"):
        raise SystemExit(f"{run_dir} trained on {'every case' if data.get('all_cases') else 'fold ' + str(data['fold'])}"
                         "'s cases, not on the training split: score a fold run with --fold, and an all-cases run "
                         "has no unseen patient")
    onnx_path = export_cnn3d_fold(Path(run_dir), Path(out_dir), name, cache, checkpoint=checkpoint, threads=threads)
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    cases = sorted(unseen_by_shipped("cnn3d", data_root) & unseen_by_model(card, data_root))
    if not cases:
        raise SystemExit(f"no validation-split patient is unseen by both {run_dir} and the shipped cnn3d")
    ours = score_cases(get_engine("cnn3d", model=onnx_path, threads=threads), data_root, cases, quiet=True)
    theirs = score_cases(get_engine("cnn3d", threads=threads), data_root, cases, quiet=True)
    history = (card.get("training") or {}).get("history") or [{}]
    return {"what": f"the model of {run_dir} ({checkpoint}) and the shipped cnn3d on the validation-split patients "
                    "neither trained on and the run did not pick its checkpoint with, paired",
            "run": str(run_dir), "checkpoint": checkpoint, "warm_start_from": history[0].get("warm_start_from"),
            "settings": card["training"]["settings"], "patches": card["training"]["patches"],
            "steps": card["training"]["steps"], "minutes": card["training"]["minutes"],
            "checkpoint_cases": card["training"].get("checkpoint_cases"), "cases": len(cases),
            "case_ids": cases, "run_model": summary(ours), "shipped": summary(theirs),
            "run_minus_shipped": paired_difference(ours, theirs),
            "per_case": {c: {"run": ours[c], "shipped": theirs[c]} for c in cases}}


def pool(out_dir: Path) -> dict:
    """The out-of-fold scores of every fold scored so far under `out_dir`, as one set of held-out cases, with the
    summary over all of them."""
    folds, scores = pooled_scores(out_dir)
    return {"folds": [{"fold": r["fold"], **r["summary"]} for r in folds], "summary": summary(scores)}


#: the confidence thresholds tried for the anatomy check
THRESHOLD_GRID = tuple(np.round(np.arange(0.50, 0.951, 0.01), 2))


def confidence_threshold(out_dir: Path, *, fail_dice: float = 0.5, min_precision: float = 0.9,
                         grid=THRESHOLD_GRID) -> dict:
    """The anatomy check's lowest acceptable organ confidence, chosen out of fold: over every held-out organ of
    the folds scored under `out_dir`, the highest threshold on the grid at which the organs below it are failures
    (Dice < fail_dice) at least `min_precision` of the time, so that an organ left out for low confidence was
    almost always wrong. With the counts per threshold, and the rule cross-fitted (`cross_fitted_threshold`)."""
    folds, _ = pooled_scores(out_dir)
    return fitted_threshold({str(r.get("fold", i)): r["cases"] for i, r in enumerate(folds)},
                            fail_dice=fail_dice, min_precision=min_precision, grid=grid)


def fitted_threshold(folds: dict, *, fail_dice: float = 0.5, min_precision: float = 0.9,
                     grid=THRESHOLD_GRID) -> dict:
    """`threshold_from_scores` over the organs of every fold ({fold: per-case scores}) pooled, with its
    `cross_fitted_threshold` figure."""
    rule = dict(fail_dice=fail_dice, min_precision=min_precision, grid=grid)
    pooled = {c: v for cases in folds.values() for c, v in cases.items()}
    return {**threshold_from_scores(pooled, **rule), "cross_fitted": cross_fitted_threshold(folds, **rule)}


def _confidence_dice(cases: dict) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, Dice) of every organ present in the label maps of `cases` ({case: {"organs": ...}})."""
    conf, dice_ = [], []
    for r in cases.values():
        for v in r["organs"].values():
            if v["dice"] is not None and v["confidence"] is not None:
                conf.append(v["confidence"])
                dice_.append(v["dice"])
    return np.asarray(conf, float), np.asarray(dice_, float)


def threshold_from_scores(cases: dict, *, fail_dice: float = 0.5, min_precision: float = 0.9,
                          grid=THRESHOLD_GRID) -> dict:
    """`confidence_threshold`'s rule on per-case scores ({case: {"organs": {organ: {"dice", "confidence"}}}})."""
    conf, dice_ = _confidence_dice(cases)
    fails = dice_ < fail_dice
    table, chosen = {}, None
    for t in grid:
        below = conf < t
        n, wrong = int(below.sum()), int((below & fails).sum())
        table[f"{t:.2f}"] = {"below": n, "failures_below": wrong,
                             "mean_dice_below": round(float(dice_[below].mean()), 4) if n else None}
        if n and wrong >= min_precision * n:
            chosen = float(t)
    return {"threshold": chosen, "organs_scored": int(len(conf)), "failures": int(fails.sum()),
            "fail_dice": fail_dice, "min_precision": min_precision, "cases": len(cases), "per_threshold": table}


def ensemble_confidence_threshold(out_dir: Path, *, fail_dice: float = 0.5, min_precision: float = 0.9,
                                  weights: str | None = None) -> dict:
    """The anatomy check's lowest acceptable organ confidence for the ensemble's fused confidences, from the
    weight sweep under `out_dir` (OUT/sweep_weights.json): `confidence_threshold`'s rule over every held-out organ
    of every swept fold, fused with the weights every fold chose (the sweep's cross-fitted choice), and the same
    rule cross-fitted: each fold's threshold chosen on the other folds' organs and applied to its own, so that
    the figure of what the threshold leaves out is not measured on the organs that chose it. `weights` ("0.7,0.3"):
    those weights' fused confidences instead of the folds' choice."""
    done = json.loads((Path(out_dir) / "sweep_weights.json").read_text())
    chosen = set(done.get("cross_fitted", {}).get("chosen_per_group", []))
    if weights is not None:  # given: e.g. the shipped ensemble's, checked on another sweep
        key = ",".join(f"{float(w):g}" for w in weights.split(","))
        if any(key not in per_fold for per_fold in done["folds"].values()):
            raise SystemExit(f"{out_dir}/sweep_weights.json has no weights {key}")
    elif len(chosen) != 1:
        raise SystemExit(f"{out_dir}/sweep_weights.json: the folds chose different weights ({sorted(chosen)}); "
                         "there is no one ensemble to fit a threshold for (name one with --weights)")
    else:
        key = chosen.pop()
    folds = {f: per_fold[key] for f, per_fold in sorted(done["folds"].items(), key=lambda kv: int(kv[0]))}
    return {"members": done["members"], "weights": key,
            **fitted_threshold(folds, fail_dice=fail_dice, min_precision=min_precision)}


def cross_fitted_threshold(folds: dict, *, fail_dice: float = 0.5, min_precision: float = 0.9,
                           grid=THRESHOLD_GRID) -> dict:
    """What the threshold leaves out, measured on organs that did not choose it: each fold's threshold chosen
    (`threshold_from_scores`) on the other folds' organs and applied to its own. `folds`: {fold: per-case scores}."""
    per_fold, left, wrong, fails = {}, 0, 0, 0
    for f, cases in folds.items():
        others = {c: v for g, cs in folds.items() if g != f for c, v in cs.items()}
        t = threshold_from_scores(others, fail_dice=fail_dice, min_precision=min_precision, grid=grid)["threshold"]
        conf, dice_ = _confidence_dice(cases)
        below = conf < t if t is not None else np.zeros(len(conf), bool)
        n, w, nf = int(below.sum()), int((below & (dice_ < fail_dice)).sum()), int((dice_ < fail_dice).sum())
        per_fold[f] = {"threshold": t, "below": n, "failures_below": w, "failures": nf}
        left, wrong, fails = left + n, wrong + w, fails + nf
    return {"per_fold": per_fold, "below": left, "failures_below": wrong, "failures": fails}


def weight_grid(n_members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of n_members non-negative multiples of `step` summing to 1."""
    k = int(round(1 / step))

    def parts(n, total):
        if n == 1:
            yield (total,)
            return
        for i in range(total, -1, -1):
            for rest in parts(n - 1, total - i):
                yield (i, *rest)

    return [tuple(round(i / k, 6) for i in p) for p in parts(n_members, k)]


def sweep_weights(members: dict[str, Path], out_dir: Path, data_root: Path, *, step: float = 0.1,
                  threads: int = 1) -> dict:
    """Out-of-fold ensemble weights: for every fold that each member (name -> its cv folder, e.g. cv/sparse; an
    engine name, or ENGINE:LABEL for another model of that engine, e.g. sparse:flip=cv/sparse_flip) has scored,
    ("shipped" instead of a folder: the engine's shipped model in every fold, on the held-out patients it never
    trained on only, so that the weights can be checked with the model an ensemble actually runs; a model file,
    .onnx with its card, likewise, on the patients its card does not list)
    the members' fold models compute their class probabilities on the fold's held-out cases once, and
    EnsembleEngine.fuse scores each weight vector of `weight_grid` on them. Writes OUT/sweep_weights.json (reusing
    folds swept before): per weight vector the pooled summary, the best, and a cross-fitted figure for the
    choice (weights chosen on the other folds' cases, scored on each fold's; with one fold, on the other half of
    its cases), so the chosen weights' figure is not measured on the cases that chose them."""
    from ..engines.ensemble import EnsembleEngine
    from ..engines.registry import get_engine

    names = list(members)
    shipped = [n for n in names if _single_model(members[n])]
    in_folds = [n for n in names if n not in shipped]
    if not in_folds:
        raise SystemExit("an ensemble sweep needs at least one member with fold models (a cv folder)")
    # a single-model member scores only the held-out patients it never trained on (the validation split, less
    # what its card lists); its model: None for the engine's shipped one
    models = {n: None if str(members[n]) == SHIPPED else Path(members[n]) for n in shipped}
    allowed = (set.intersection(*[unseen_by_shipped(_engine_of(n), data_root) if m is None
                                  else unseen_by_model(_card_of(m), data_root) for n, m in models.items()])
               if shipped else None)
    if allowed is not None and not allowed:
        raise SystemExit(f"the {', '.join(shipped)} model(s) trained on every validation-split patient: no "
                         "held-out patient is unseen by them, so there is nothing to sweep")
    shipped_engines = {n: get_engine(_engine_of(n), model=m, threads=threads) for n, m in models.items()}
    grid = weight_grid(len(names), step)
    keys = [",".join(f"{w:g}" for w in ws) for ws in grid]
    path = Path(out_dir) / "sweep_weights.json"
    done = json.loads(path.read_text()) if path.exists() else {"members": names, "folds": {}}
    if done["members"] != names:
        raise SystemExit(f"{path} holds a sweep of {done['members']}, not {names}")
    folds = sorted(set.intersection(*[{int(p.parent.name[4:]) for p in Path(members[n]).glob("fold*/scores.json")}
                                      for n in in_folds]))
    ds = Dataset(data_root)
    by_id = {c.case_id: c for c in ds.cases}
    for k in folds:
        held = [json.loads((Path(members[n]) / f"fold{k}" / "scores.json").read_text())["held_out"]
                for n in in_folds]
        if any(h != held[0] for h in held):
            raise SystemExit(f"fold {k}: the members' held-out cases differ")
        cases = [c for c in held[0] if allowed is None or c in allowed]
        if not cases:
            continue
        per_fold = done["folds"].setdefault(str(k), {})
        if all(key in per_fold and set(per_fold[key]) == set(cases) for key in keys):
            continue
        engines = {n: shipped_engines[n] if n in shipped else
                   get_engine(_engine_of(n), model=_fold_model(Path(members[n]) / f"fold{k}",
                                                              f"{_engine_of(n)}_fold{k}"), threads=threads)
                   for n in names}
        ens = EnsembleEngine(members=[(n, 1.0) for n in names], engines=lambda n, threads=None: engines[n],
                             threads=1)
        ids = {c: i for i, c in enumerate(ens.classes)}
        t = time.perf_counter()
        for cid in cases:
            case = by_id[cid]
            vol, lab = case.load_image(), case.load_labels().array
            probs = [e.class_probabilities(vol) for e, _ in ens.members]
            for key, ws in zip(keys, grid):
                seg = ens.fuse(vol, probs, ws)
                per_fold.setdefault(key, {})[cid] = {"organs": _organ_scores(seg, lab, case.organs, ids,
                                                                             ds.label_map.ids)}
        print(f"fold {k}: {len(cases)} cases, {len(keys)} weight vectors ({time.perf_counter() - t:.0f} s)",
              flush=True)
        path.write_text(json.dumps(done) + "\n")
    return _weights_summary(done, keys, path)


#: a member's cv folder given as this means the engine's shipped model, in every fold
SHIPPED = "shipped"


def _single_model(where) -> bool:
    """Whether a member is one model rather than a cv folder of fold models: "shipped", or a model file (.onnx,
    or the .json card of a multi-file model)."""
    return str(where) == SHIPPED or Path(where).suffix in (".onnx", ".json")


def _card_of(model: Path) -> dict:
    """A model file's card (the .json beside an .onnx file, or the card itself)."""
    card = Path(model).with_suffix(".json")
    if not card.exists():
        raise SystemExit(f"{model}: no model card ({card.name}) beside it, so the patients it trained on are unknown")
    return json.loads(card.read_text())


def _engine_of(member: str) -> str:
    """A member's engine: its name up to a colon ("sparse:flip" is a second sparse model, from its own cv folder)."""
    return member.partition(":")[0]


def _fold_model(fold_dir: Path, name: str) -> Path:
    """A fold's model: its ONNX file, or the card of a multi-file model (the cascade)."""
    onnx_path = fold_dir / f"{name}.onnx"
    return onnx_path if onnx_path.exists() else fold_dir / f"{name}.json"


def _weights_summary(done: dict, keys: list[str], path: Path) -> dict:
    folds = sorted(done["folds"], key=int)
    pooled = {key: {c: v for f in folds for c, v in done["folds"][f][key].items()} for key in keys}
    done["pooled"] = {key: summary(cases) for key, cases in pooled.items()}
    best = max(keys, key=lambda key: done["pooled"][key]["mean_dice"])
    # cross-fitted: the choice made without the cases it is scored on
    # sorted case lists, not sets: the bootstrap below resamples in dict order, which must not depend on the
    # process's string hashing
    groups = ([sorted(done["folds"][f][keys[0]]) for f in folds] if len(folds) > 1
              else [sorted(done["folds"][folds[0]][keys[0]])[i::2] for i in (0, 1)])
    organs = sorted({o for r in pooled[keys[0]].values() for o in r["organs"]})
    groups = [g for g in groups if g]
    single = {n: ",".join("1" if i == j else "0" for j in range(len(done["members"])))
              for i, n in enumerate(done["members"])}
    done["best"] = {"weights": best, **done["pooled"][best]}
    if len(groups) < 2:  # one case in all: no case is left to choose weights for it without it
        done["cross_fitted"] = {"chosen_per_group": [], "note": "one case: no cross-fitted figure"}
        done["cross_fitted_minus_member"] = {}
        path.write_text(json.dumps(done) + "\n")
        return {"members": done["members"], "folds": folds, "best": done["best"],
                "cross_fitted": done["cross_fitted"], "cross_fitted_minus_member": {},
                "pooled_mean_dice": {k: v["mean_dice"] for k, v in done["pooled"].items()}}
    fitted, chosen = {}, []
    for g in groups:
        inside = set(g)
        outside = [c for c in pooled[keys[0]] if c not in inside]
        pick = max(keys, key=lambda key: _mean_dice(pooled[key], outside, organs))
        chosen.append(pick)
        fitted.update({c: pooled[pick][c] for c in g})
    fitted = dict(sorted(fitted.items()))
    done["cross_fitted"] = {"chosen_per_group": chosen, **summary(fitted)}
    done["cross_fitted_minus_member"] = {n: paired_difference(fitted, pooled[k]) for n, k in single.items()
                                         if k in pooled}
    path.write_text(json.dumps(done) + "\n")
    return {"members": done["members"], "folds": folds, "best": done["best"], "cross_fitted": done["cross_fitted"],
            "cross_fitted_minus_member": done["cross_fitted_minus_member"],
            "pooled_mean_dice": {k: v["mean_dice"] for k, v in done["pooled"].items()}}


def _organ_scores(seg, labels: np.ndarray, organs, seg_ids: dict, label_ids: dict) -> dict:
    """{organ: {"dice", "confidence"}} of a segmentation against the case's label array, for its contoured
    `organs` (seg_ids / label_ids: organ -> label value in the segmentation / in the dataset's labels)."""
    out = {}
    for o in organs:
        d = dice(confusion(seg.labels.array == seg_ids[o], labels == label_ids[o]))
        out[o] = {"dice": round(float(d), 4) if np.isfinite(d) else None, "confidence": seg.confidence.get(o)}
    return out


def main(argv=None) -> None:
    import argparse

    from .folds import fold_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["sparse", "cnn3d", "cascade", "ensemble"])
    ap.add_argument("--fold", type=int, help="the fold to export and score")
    ap.add_argument("--run", type=Path, help="the fold's training run folder (train_sparse --fold); cascade: a "
                                            "pattern with {group} (train_cascade --fold runs)")
    ap.add_argument("--heatmap", type=Path, help="cascade: the fold's heat-map run folder (train_heatmap --fold)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", default=None, help="default: last.pt (sparse), best.pt (cnn3d)")
    ap.add_argument("--cache", type=Path, help="cnn3d: the training cache (train_cnn3d --cache), for the offsets")
    ap.add_argument("--pool", action="store_true",
                    help="pool the folds already scored under --out into OUT/pooled.json (no training run needed)")
    ap.add_argument("--sweep-alpha", default=None,
                    help="comma-separated prior-correction strengths: re-score every scored fold's model on its "
                         "held-out cases with each (needs --data), pooled per alpha into OUT/sweep_alpha.json")
    ap.add_argument("--sweep-segmentation", default=None, metavar="NAME=V1,V2",
                    help="one coarse-to-fine setting (majority, largest_component, components_before_refinement, "
                         "max_sweeps; levels_mm as 8/4/2) with each value re-scored like --sweep-alpha, into "
                         "OUT/sweep_segmentation.json")
    ap.add_argument("--sweep-organ-bias", default=None, metavar="ORGAN=D1,D2",
                    help="offsets added to one organ's logit bias, each re-scored like --sweep-alpha, into "
                         "OUT/sweep_organ_bias.json")
    ap.add_argument("--sweep-mirror", default=None, metavar="W1,W2",
                    help="test-time mirror averaging with each weight, re-scored like --sweep-alpha, into "
                         "OUT/sweep_mirror.json")
    ap.add_argument("--against-shipped", action="store_true",
                    help="score the engine's shipped model on the validation-split patients the folds under --out "
                         "held out, paired against the fold models (needs --data; OUT/against_shipped.json); cnn3d "
                         "with --run of a training-split run (no fold): that run's model against the shipped one on "
                         "the validation-split patients neither saw (needs --cache; OUT/run_against_shipped.json)")
    ap.add_argument("--confidence-threshold", action="store_true",
                    help="choose the anatomy check's lowest organ confidence from the folds scored under --out "
                         "(ensemble: from its weight sweep there, for the weights the folds chose) into "
                         "OUT/confidence_threshold.json")
    ap.add_argument("--members", default=None, metavar="NAME=CV_DIR,...",
                    help="ensemble: the members and their cv folders (e.g. sparse=cv/sparse,cnn3d=cv/cnn3d; "
                         "ENGINE:LABEL=DIR for another model of an engine, e.g. sparse:flip=cv/sparse_flip; "
                         "NAME=shipped for the engine's shipped model, NAME=FILE.onnx for one model with its "
                         "card, each on the validation-split patients it never saw); their "
                         "folds' models are fused with every weight vector on a grid (--step) into "
                         "OUT/sweep_weights.json")
    ap.add_argument("--step", type=float, default=0.1, help="ensemble: the weight grid's step")
    ap.add_argument("--weights", default=None, metavar="W1,W2",
                    help="ensemble --confidence-threshold: fit it for these weights (default: the ones every fold "
                         "chose)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if a.engine == "ensemble" and a.confidence_threshold:
        result = ensemble_confidence_threshold(a.out, weights=a.weights)
        (a.out / "confidence_threshold.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "per_threshold"}, indent=1))
        return
    if a.engine == "ensemble":
        if a.members is None or a.data is None:
            ap.error("ensemble needs --members and --data")
        members = dict((n, Path(d)) for n, _, d in (m.partition("=") for m in a.members.split(",")))
        a.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(sweep_weights(members, a.out, a.data, step=a.step, threads=a.threads), indent=1))
        return
    if a.against_shipped and a.run is not None and a.fold is None:
        if a.engine != "cnn3d" or a.data is None or a.cache is None:
            ap.error("--against-shipped --run scores a cnn3d training-split run: it needs cnn3d, --data and --cache")
        result = run_against_shipped(a.run, a.out, a.data, a.cache, checkpoint=a.checkpoint or "best.pt",
                                     name=f"cnn3d_{a.run.name}", threads=a.threads)
        (a.out / "run_against_shipped.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("per_case", "case_ids")}, indent=1))
        return
    if a.against_shipped:
        if a.data is None:
            ap.error("--against-shipped needs --data")
        result = against_shipped(a.engine, a.out, a.data, threads=a.threads)
        (a.out / "against_shipped.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    if a.confidence_threshold:
        result = confidence_threshold(a.out)
        (a.out / "confidence_threshold.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "per_threshold"}, indent=1))
        return
    if a.sweep_alpha:
        if a.data is None:
            ap.error("--sweep-alpha needs --data")
        result = sweep_alpha(a.out, a.data, [float(x) for x in a.sweep_alpha.split(",")], threads=a.threads)
        print(json.dumps(result, indent=1))
        return
    if a.sweep_segmentation:
        if a.data is None or "=" not in a.sweep_segmentation:
            ap.error("--sweep-segmentation needs NAME=V1,V2,... and --data")
        name, _, values = a.sweep_segmentation.partition("=")
        values = [[float(x) for x in v.split("/")] if name == "levels_mm" else json.loads(v.lower())
                  for v in values.split(",")]
        result = sweep_segmentation(a.out, a.data, name, values, threads=a.threads)
        print(json.dumps(result, indent=1))
        return
    if a.sweep_organ_bias:
        if a.data is None or "=" not in a.sweep_organ_bias:
            ap.error("--sweep-organ-bias needs ORGAN=D1,D2,... and --data")
        organ, _, values = a.sweep_organ_bias.partition("=")
        classes = json.loads((MODELS_DIR / "sparse_openkbp.json").read_text())["classes"]
        if organ not in classes[1:]:
            ap.error(f"--sweep-organ-bias: {organ!r} is not one of the sparse model's organs ({', '.join(classes[1:])})")
        print(json.dumps(sweep_organ_bias(a.out, a.data, organ, [float(v) for v in values.split(",")],
                                          threads=a.threads), indent=1))
        return
    if a.sweep_mirror:
        if a.data is None:
            ap.error("--sweep-mirror needs --data")
        print(json.dumps(sweep_mirror(a.out, a.data, [float(v) for v in a.sweep_mirror.split(",")],
                                      threads=a.threads), indent=1))
        return
    if a.pool:
        result = pool(a.out)
        (a.out / "pooled.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    if a.fold is None or a.run is None or a.data is None:
        ap.error("--fold, --run and --data are needed to score a fold (or --pool)")
    name = f"{a.engine}_fold{a.fold}"
    fold_dir = a.out / f"fold{a.fold}"
    train_ids, held = fold_cases(a.data, a.fold)
    if a.engine == "cascade":
        runs = {g: Path(str(a.run).format(group=g))
                for g in json.loads((MODELS_DIR / "cascade_openkbp.json").read_text())["groups"]}
        if a.heatmap is None or a.cache is None:
            ap.error("cascade needs --heatmap and --cache")
        run_dirs = [*runs.values(), a.heatmap]
    else:
        run_dirs = [a.run]
    for run_dir in run_dirs:
        data = json.loads((run_dir / "data.json").read_text())
        if (set(data.get("cases", [])) | set(data.get("checkpoint_cases", []))) & set(held):
            raise SystemExit(f"{run_dir} was trained on cases of fold {a.fold}'s held-out set")
    if a.engine == "cascade":
        from ..engines.registry import get_engine

        card_path = export_cascade_fold(runs, a.heatmap, fold_dir, name, a.cache,
                                        checkpoint=a.checkpoint or "best.pt", threads=a.threads)
        scores = score_cases(get_engine("cascade", model=card_path, threads=a.threads), a.data, held)
    elif a.engine == "cnn3d":
        if a.cache is None:
            ap.error("cnn3d needs --cache (its logit offsets are fitted on the fold's training cases)")
        from ..engines.cnn3d import Cnn3dEngine

        onnx_path = export_cnn3d_fold(a.run, fold_dir, name, a.cache, checkpoint=a.checkpoint or "best.pt",
                                      threads=a.threads)
        scores = score_cases(Cnn3dEngine(model=onnx_path, threads=a.threads), a.data, held)
    else:
        onnx_path = export_sparse_fold(a.run, fold_dir, name, checkpoint=a.checkpoint or "last.pt")
        scores = score_fold(onnx_path, a.data, held, threads=a.threads)
    result = {"engine": a.engine, "fold": a.fold, "held_out": held, "summary": summary(scores), "cases": scores}
    (fold_dir / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
