"""From the cascade's group training runs (train_cascade) to a shipped engine: each group network exported to
ONNX (checked against ONNX Runtime, graph optimised offline, as cnn3d), the card written, and the engine itself
scored on the validation cases with each localiser, with/without the largest-component step, with/without
per-class logit offsets fitted on training crops (`logit_offsets`), and the best of those with/without averaging
each crop with its left-right mirror; the best setting goes in the card.

    python -m organscope.training.cascade_pipeline --runs work/cascade/run1_{group} --data ../shared/data/openkbp \
        --out work/cascade/export --cache work/cnn3d/cache [--install]
    python -m organscope.training.cascade_pipeline --model src/organscope/models/cascade_openkbp.json ...  # refit
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..datasets import Dataset
from ..engines.cascade.groups import GROUPS, MARGIN_VOX
from ..engines.cnn3d.preprocess import GRID, SPACING_MM, WINDOWS_HU
from ..modelcard import MODELS_DIR
from .cnn3d_data import N_SPECIAL
from .cnn3d_net import Cnn3dNet, count_gflops, count_parameters
from .cnn3d_pipeline import export
from .engine_validation import score_engine
from .logit_offsets import cached_samples, fit_offsets


def load_group(run_dir: Path, checkpoint: str = "best.pt") -> tuple[Cnn3dNet, dict, dict]:
    run = json.loads((run_dir / "settings.json").read_text())
    net = Cnn3dNet(N_SPECIAL + len(run["organs"]), width=run["settings"]["width"])
    ck = torch.load(run_dir / checkpoint, weights_only=False)
    net.load_state_dict(ck["net"])
    return net.eval(), run, ck["state"]


def heatmap_available() -> bool:
    return (MODELS_DIR / "heatmap_openkbp.onnx").exists() and (MODELS_DIR / "heatmap_openkbp.json").exists()


def finalize(runs: dict[str, Path], data_root: Path, out_dir: Path, name: str = "cascade_openkbp", *,
             install: bool = False, cache: Path | None = None) -> dict:
    """`cache`: the training cache, for fitting each group's logit offsets on training crops (every sixth
    case); without it none are fitted."""
    ds = Dataset(data_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = {}
    for gname in GROUPS:
        net, run, state = load_group(runs[gname])
        onnx_path = out_dir / f"{name}_{gname}.onnx"
        err = export(net, onnx_path)
        crop = [int(v) for v in run["crop"]]
        groups[gname] = {
            "organs": run["organs"], "file": onnx_path.name, "crop": crop,
            "network_classes": ["air", "body", *run["organs"]],
            "parameters": count_parameters(net), "gflops_crop": round(count_gflops(net, (1, 2, *crop)), 3),
            "onnx_parity_max_abs_diff": err,
            "training": {"settings": run["settings"], "plan": run["plan"], "init": run["init"],
                         "steps": state["step"], "minutes": round(state["elapsed_s"] / 60, 1),
                         "history": state["history"]},
        }
        print(f"{gname}: exported {onnx_path.name} ({onnx_path.stat().st_size / 1e6:.2f} MB), "
              f"crop {crop}, max |torch - ORT| = {err:.1e}", flush=True)
    card = {
        "name": name, "engine": "cascade", "format": "onnx",
        # label values as the other engines give them: the dataset's organ order
        "classes": ["background", *[ds.label_map.names[i] for i in sorted(ds.label_map.names)
                                    if any(ds.label_map.names[i] in g["organs"] for g in groups.values())]],
        "grid": list(GRID), "spacing_mm": [list(s) for s in SPACING_MM], "windows_hu": [list(w) for w in WINDOWS_HU], "margin_vox": MARGIN_VOX,
        "input": "per group, (1, 2, d, h, w) float32 (multiples of 16): a crop of the scan on the canonical RAS+ "
                 "128^3 grid around the group's located boxes, HU through two windows clipped to [0, 1]",
        "output": "per group, logits (1, 2 + group organs, d, h, w): air, body, the group's organs; softmax; "
                  "the highest probability wins between groups",
        "groups": groups,
        "training_data": "OpenKBP (Babier et al. 2021), training split (170 cases); crops around the true group "
                         "boxes, centre jittered by up to 4 voxels, rotated up to 10 degrees, scaled 0.9-1.1",
    }
    return choose_settings_and_write_card(card, out_dir, data_root, cache=cache, install=install)


def choose_settings_and_write_card(card: dict, out_dir: Path, data_root: Path, *, cache: Path | None = None,
                                   install: bool = False) -> dict:
    """Fit each group's logit offsets on training crops (with a cache), score the engine on the validation cases
    with each localiser x largest component x offsets (and mirror averaging on the best of those), keep the
    best in the card (out_dir/<name>.json, the group networks beside it) and, with `install`, copy all into the
    package."""
    from ..engines.registry import get_engine

    groups = card["groups"]
    offsets = {}
    if cache is not None:
        for gname, spec in groups.items():
            samples = cached_samples(out_dir / spec["file"], cache, group_organs=spec["organs"], crop=spec["crop"])
            offsets[gname] = [float(v) for v in fit_offsets(samples, N_SPECIAL,
                                                             log=lambda m, g=gname: print(f"{g}: {m}", flush=True))]
    card_path = out_dir / f"{card['name']}.json"
    cases = Dataset(data_root).split("validation")
    localizers = ["sparse_grid"] + (["heatmap"] if heatmap_available() else [])
    results = {}

    def score(loc: str, lcc: bool, mirror: bool, off: bool) -> None:
        c = dict(card, localizer=loc, largest_component=lcc, mirror_tta=mirror,
                 groups={g: dict(spec, logit_offsets=offsets[g] if off else None) for g, spec in groups.items()})
        card_path.write_text(json.dumps(c))
        r = score_engine(get_engine("cascade", model=card_path), cases, data_root, Path(tmp) / f"{loc}_{lcc}_{mirror}_{off}",
                         quiet=True)
        results[(loc, lcc, mirror, off)] = r
        print(f"localizer={loc} largest_component={lcc} mirror_tta={mirror} logit_offsets={off}: mean Dice "
              f"{r['mean']['dice']:.4f}, {r['median_seconds']['total']:.2f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # every localiser x largest component x offsets; mirror averaging (twice the network time) on the best
        for loc, lcc, off in itertools.product(localizers, (False, True), (False, True) if offsets else (False,)):
            score(loc, lcc, False, off)
        loc, lcc, _, off = max(results, key=lambda k: results[k]["mean"]["dice"])
        score(loc, lcc, True, off)
    (loc, lcc, mirror, off), best = max(results.items(), key=lambda kv: kv[1]["mean"]["dice"])
    for g, spec in groups.items():
        spec["logit_offsets"] = offsets[g] if off else None
    card.update(localizer=loc, largest_component=lcc, mirror_tta=mirror, date=_dt.date.today().isoformat())
    if offsets:
        card["logit_offsets_fit"] = {"cases": "every sixth training case, the crop around its true group box",
                                     "method": "training.logit_offsets: one organ at a time, Dice on the crop, "
                                               "two passes", "fitted": offsets}
    card["validation"] = {
        "cases": [c.case_id for c in cases],
        "note": "organscope segment --engine cascade, scored like organscope evaluate (Dice per contoured organ, "
                "NSD at 2 mm); the localiser, the largest-component step, the logit offsets and the mirror "
                "averaging are chosen on these cases",
        **best,
        "settings_search": {f"localizer={k[0]}, largest_component={k[1]}, mirror_tta={k[2]}, logit_offsets={k[3]}":
                            {"mean_dice": v["mean"]["dice"], "median_seconds": v["median_seconds"]["total"]}
                            for k, v in results.items()},
    }
    card_path.write_text(json.dumps(card, indent=1))
    print(f"model card {card_path}: localizer {loc}, largest_component {lcc}, mirror_tta {mirror}, offsets {off}, "
          f"mean Dice {best['mean']['dice']:.4f}")
    if install:
        for g in groups.values():
            shutil.copy2(out_dir / g["file"], MODELS_DIR / g["file"])
        shutil.copy2(card_path, MODELS_DIR / card_path.name)
        print(f"installed into {MODELS_DIR}")
    return card


def run_pipeline(*, data: Path, work: Path = Path("work"), name: str | None = None, hours: float = 1.55,
                 install: bool = False) -> int:
    """`organscope train --engine cascade`: cache, each group network (resumes; starts from the cnn3d run in the
    same work folder when there is one), export, validate, card. --hours is shared by the three groups."""
    from .cnn3d_data import build_cache
    from .train_cascade import CascadeSettings, train_group

    data, work = Path(data), Path(work)
    name = name or "cascade_openkbp"
    cache = work / "cnn3d_cache"
    if not (cache / "cases.json").exists():
        build_cache(data, cache)
    init = work / "runs" / "cnn3d_openkbp" / "best.pt"
    runs = {g: work / "runs" / f"{name}_{g}" for g in GROUPS}
    for g, run_dir in runs.items():
        train_group(cache, run_dir, g, CascadeSettings(minutes=hours * 60 / len(GROUPS)),
                    init=init if init.exists() else None)
    finalize(runs, data, work, name, install=install, cache=cache)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", help="run folder pattern with {group}, e.g. work/cascade/run1_{group}")
    src.add_argument("--model", type=Path, help="an exported cascade's card (its group networks beside it), e.g. "
                                                "the shipped one: copied to --out, settings chosen afresh")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("work/cascade/export"))
    ap.add_argument("--name", default="cascade_openkbp")
    ap.add_argument("--cache", type=Path, help="training cache: fit each group's logit offsets on its crops")
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    if a.runs is not None:
        finalize({g: Path(a.runs.format(group=g)) for g in GROUPS}, a.data, a.out, a.name, install=a.install,
                 cache=a.cache)
        return
    card = json.loads(a.model.read_text())
    a.out.mkdir(parents=True, exist_ok=True)
    for spec in card["groups"].values():
        shutil.copy2(a.model.parent / spec["file"], a.out / spec["file"])
        spec.pop("logit_offsets", None)
    for key in ("localizer", "largest_component", "mirror_tta", "validation", "logit_offsets_fit"):
        card.pop(key, None)
    choose_settings_and_write_card(card, a.out, a.data, cache=a.cache, install=a.install)


if __name__ == "__main__":
    main()
