"""organscope command line: segment | query | locate | evaluate | convert | models | train | serve.

Heavy modules are imported inside the commands so that `organscope --help` starts instantly (building the parser
imports neither numpy nor any engine). The CLI is the only place that sees argparse's Namespace: each command
unpacks it into the typed arguments of the library (pipeline.run, batch.cmd_batch, metrics.report.main_evaluate,
the training pipelines). Every OrganscopeError, and every bad option value, becomes one line on stderr
(`organscope: error: ...`) and exit status 2; no partial output is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import signal
import sys
import warnings
from pathlib import Path

from .errors import InputError, OrganscopeError


class _Parser(argparse.ArgumentParser):
    """argparse with the house's error format: one line `organscope: error: ...`, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"organscope: error: {message}\n")


class _Formatter(argparse.HelpFormatter):
    """Keeps the line breaks of a help text (one line per engine), wrapping each line on its own."""

    def _split_lines(self, text, width):
        out: list[str] = []
        for line in text.splitlines():
            indent = line[: len(line) - len(line.lstrip())]
            parts = super()._split_lines(line, width - len(indent) - 2) or [""]
            out += [indent + parts[0]] + [indent + "  " + part for part in parts[1:]]
        return out


def _positive_int(text: str, *, what: str = "", hint: str = "") -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number{what}, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1{hint}, got {n}")
    return n


def _threads(text: str) -> int:
    return _positive_int(text, what=" of CPU threads", hint=" (leave it out to use every core)")


def _positive_mm(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of millimetres, got {text!r}")
    return v


def _engine_help(intro: str, names=None) -> str:
    from .engines.registry import ENGINE_INFO  # light: no engine is imported

    return intro + "\n" + "\n".join(f"  {n}: {ENGINE_INFO[n]}" for n in (names or ENGINE_INFO))


def _progress_bar(enabled: bool):
    """A progress callback drawing a tqdm bar on stderr when it is a terminal (or when forced)."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{desc:<34} {percentage:3.0f}%|{bar}| {elapsed}", file=sys.stderr)

    def update(stage: str, fraction: float):
        bar.set_description_str(stage)
        bar.n = int(round(100 * fraction))
        bar.refresh()

    return update, bar.close


def _organ_list(text: str) -> list[str]:
    """Organ names separated by commas (spaces after the commas allowed: --organs 'parotid_left, mandible')."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(" " in n for n in names):
        raise argparse.ArgumentTypeError(f"give organ names separated by commas, e.g. parotid_left,mandible; "
                                         f"got {text!r}")
    return names


def _parse_point(text: str) -> list[float]:
    parts = text.replace(";", ",").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"A point must be three numbers 'x,y,z', got {text!r}.")
    return values


def _read_points_csv(path: Path) -> list[list[float]]:
    if not path.exists():
        raise InputError(f"Points file {path} does not exist.")
    rows, header_seen = [], False
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                point = [float(v) for v in row]
            except ValueError:
                if rows or header_seen:  # one header line is allowed, before the first point
                    raise InputError(f"{path}: cannot read a point from line {row!r}.") from None
                header_seen = True
                continue
            if len(point) != 3 or not all(math.isfinite(v) for v in point):
                raise InputError(f"{path}: each line needs exactly three finite numbers x,y,z, got {row!r}.")
            rows.append(point)
    if not rows:
        raise InputError(f"{path} holds no points.")
    return rows


def _asked_outputs(args) -> dict[str, str]:
    """{output: value given ('' for a bare flag)} of the optional outputs asked for on the command line."""
    from .batch import EXTRA_OUTPUTS  # option dest -> suffix added to the label map's name

    return {k: getattr(args, k) for k in EXTRA_OUTPUTS if getattr(args, k, None) is not None}


def _segment_options(args):
    from .pipeline import SegmentOptions

    return SegmentOptions(engine=args.engine, model=args.model, threads=args.threads,
                          organs=None if args.organs is None else tuple(args.organs), priors=args.priors,
                          keep_unverified=getattr(args, "keep_unverified", False))


def _compile_notice(engine: str | None, shown: bool, *, query: bool = False) -> None:
    """One line on stderr when numba has not cached the engine's kernels yet (the first run after an installation
    compiles them: 1-3.5 s more, benchmarks/bench_first_run.py), shown with the progress output (a terminal, or
    --progress), so that scripts and logs keep their one line per scan; checked in about a millisecond, without
    importing numba. query=True: the kernels of point queries."""
    if not shown:
        return
    from .jit_cache import NOTICE, kernels_cached

    if not kernels_cached(engine, query=query):
        print(NOTICE, file=sys.stderr, flush=True)


def cmd_segment(args) -> int:
    from . import batch

    progress_wanted = args.progress if args.progress is not None else sys.stderr.isatty()
    options = _segment_options(args)  # the engine resolved: named, the model's, or the default
    _compile_notice(options.engine, progress_wanted)
    if batch.is_batch_input(args.input):  # a folder of scans or a glob: -o is an output folder
        if args.series_uid is not None:
            raise InputError("--series-uid picks one series of one DICOM folder; it cannot be used with "
                             "several scans.")
        return batch.cmd_batch(args.input, args.output, options, asked=_asked_outputs(args),
                               jobs=args.jobs, scheduler=args.scheduler, progress=progress_wanted)
    from .pipeline import run

    targets = batch.single_targets(args.output, _asked_outputs(args))
    progress, close = _progress_bar(progress_wanted)
    try:
        res = run(args.input, targets, options, progress=progress, series_uid=args.series_uid)
    finally:
        close()
    t = res.timings_s
    points = f", {int(t['points_classified'])} points classified" if "points_classified" in t else ""
    print(f"{args.output}: {res.found()}; {t['total']:.2f} s{points}", file=sys.stderr)
    if res.warning_line():
        print(res.warning_line(), file=sys.stderr)
    return 0


def cmd_query(args) -> int:
    import numpy as np

    from . import api

    points = [_parse_point(p) for p in args.point or []]
    if args.csv:
        points += _read_points_csv(Path(args.csv))
    if not points:
        raise InputError("Give at least one point with --point x,y,z or --csv FILE.")
    from .engines.registry import DEFAULT_QUERY_ENGINE

    _compile_notice(DEFAULT_QUERY_ENGINE, sys.stderr.isatty(), query=True)
    scan = api.query_engine(model=args.model, threads=args.threads).prepare(api.load_volume(args.scan))
    res = api.query(scan, np.array(points), voxel=args.voxel, model=args.model, threads=args.threads,
                    keep_unverified=args.keep_unverified)
    region, check = api.query_check(scan, model=args.model, threads=args.threads)
    outside = check is not None and check.region != region
    reason = f"the scan is not {region} CT ({check.reason})" if outside else None
    unit = "vox" if args.voxel else "mm"
    if args.json:
        out = [{"point": p, "unit": unit, "organ": n, "probability": round(float(pr), 4),
                "top3": [{"organ": a, "probability": round(float(b), 4)} for a, b in zip(tn, tp)]}
               | ({"status": "unverified" if args.keep_unverified else "unknown", "reason": reason} if outside else {})
               for p, n, pr, tn, tp in zip(points, res.names, res.probability, res.top3_names, res.top3_probability)]
        print(json.dumps({"points": out}, indent=1))
        if outside:
            print(f"organscope: warning: This scan does not look like {region} CT ({check.reason}); "
                  f"{'answers are unverified' if args.keep_unverified else 'no organ is answered'}.", file=sys.stderr)
        return 0
    print(f"{'x':>8} {'y':>8} {'z':>8} ({unit})  {'organ':<16} {'p':>6}  top-3")
    for p, n, pr, tn, tp in zip(points, res.names, res.probability, res.top3_names, res.top3_probability):
        top = ", ".join(f"{a} {b:.2f}" for a, b in zip(tn, tp))
        print(f"{p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}        {n:<16} {pr:6.3f}  {top}")
    if outside:
        print(f"organscope: warning: This scan does not look like {region} CT ({check.reason}); "
              f"{'answers are unverified' if args.keep_unverified else 'no organ is answered'}.", file=sys.stderr)
    return 0


def cmd_locate(args) -> int:
    from .engines.registry import get_localizer
    from .io import load_volume, write_text_atomic
    from .localize import locations_to_json

    if args.output:
        from .io import check_not_input, check_writable

        check_not_input([args.output], [args.scan])
        check_writable(args.output)
    vol = load_volume(args.scan)
    timings: dict = {}
    options = {"level_mm": args.level_mm} if args.localizer == "sparse_grid" else {}
    localizer = get_localizer(args.localizer, threads=args.threads, **options)
    locs = localizer.locate(vol, timings=timings)
    from .localize.boxes import check_locations
    from .qc import model_region

    locs, warning = check_locations(locs, vol, model_region(localizer) or "head-and-neck",
                                    keep_unverified=args.keep_unverified)
    doc = locations_to_json(locs)
    text = json.dumps(doc)
    if args.output:
        write_text_atomic(args.output, text + "\n")
    if warning:
        print(f"organscope: warning: {warning}", file=sys.stderr)
    if args.json:
        print(text)
        return 0
    print(f"{'organ':<16} {'present':<8} {'conf':>5}  {'centroid (mm, RAS)':<26} box (voxels of the input grid)")
    for name, loc in locs.items():
        if loc.present:
            c = ", ".join(f"{v:.1f}" for v in loc.centroid_mm)
            print(f"{name:<16} {'yes':<8} {loc.confidence:5.2f}  {c:<26} {list(loc.box_voxels[0])}-{list(loc.box_voxels[1])}")
        else:
            print(f"{name:<16} {'no':<8} {'':>5}" + (f"  ({loc.reason})" if loc.reason else ""))
    extra = f", {int(timings['points_classified'])} points classified" if "points_classified" in timings else ""
    print(f"{timings['total']:.2f} s ({args.localizer}){extra}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .engines.registry import default_model, load_card
    from .modelcard import MODELS_DIR

    cards = {}
    for card_path in sorted(MODELS_DIR.glob("*.json")):
        card = load_card(card_path)  # each through its engine's card class: a broken shipped card is an error
        cards[card_path.stem] = card
        val = card.validation
        n_organs = len(card.organ_names)
        if card.engine == "locate":
            own = val.get("heatmap", {})  # its trainer scores both localisers; this card is the heat-map one
            score = (f"median_centroid_error_mm={own.get('median_centroid_error_mm', float('nan')):.1f} "
                     f"mean_box_recall={own.get('mean_box_recall', float('nan')):.3f}")
        else:
            dice = val.get("mean_dice", val.get("mean", {}).get("dice"))
            # a model trained on every case states the out-of-fold figure of its recipe (training/ship_sparse.py)
            # a fine-tune of a shipped model on every case states its recipe's figure on unseen patients
            # (training/ship_cnn3d.py --checked)
            kind = "out_of_fold" if "folds" in val else "estimated" if "estimate_from" in val else "validation"
            score = f"{kind}_mean_dice={'n/a' if dice is None else f'{dice:.4f}'}"
            if "point_accuracy" in val:
                score += f" point_accuracy={val['point_accuracy']:.4f}"
        print(f"{card_path.stem}: engine={card.engine} region={card.body_region or 'unstated'} organs={n_organs} "
              f"({', '.join(card.organ_names)}) trained={card.date} {score}")
    from .engines.ensemble import DEFAULT_MEMBERS, OUT_OF_FOLD_MEAN_DICE, QC_MIN_CONFIDENCE
    from .engines.registry import DEFAULT_ENGINE

    # the ensemble has no card: its members' shipped models (their region and organs), weights and figures
    first = cards[default_model(DEFAULT_MEMBERS[0][0])]
    members = " + ".join(f"{w:g} {default_model(n)}" for n, w in DEFAULT_MEMBERS)
    default = " (the default segmentation engine)" if DEFAULT_ENGINE == "ensemble" else ""
    print(f"ensemble{default}: engine=ensemble region={first.body_region or 'unstated'} "
          f"organs={len(first.organ_names)} ({', '.join(first.organ_names)}) members={members} "
          f"out_of_fold_mean_dice={OUT_OF_FOLD_MEAN_DICE:.3f} qc_min_confidence={QC_MIN_CONFIDENCE:.2f}")
    return 0


def cmd_evaluate(args) -> int:
    from .metrics.report import main_evaluate

    if Path(args.ref_dir).is_file() or args.reference_series is not None:
        from .convert import evaluate_dicom_reference  # an RTSTRUCT or DICOM-SEG reference

        return evaluate_dicom_reference(args.pred_dir, args.ref_dir, reference_series=args.reference_series,
                                        out_prefix=args.out_prefix, tolerance_mm=args.tolerance_mm,
                                        organs=args.organs)
    return main_evaluate(args.pred_dir, args.ref_dir, out_prefix=args.out_prefix, tolerance_mm=args.tolerance_mm,
                         dataset_json=args.dataset_json, organs=args.organs)


def cmd_convert(args) -> int:
    from .convert import run_convert

    return run_convert(args.input, args.output, ct=args.ct, series_uid=args.series_uid, rois=args.rois)


def cmd_train(args) -> int:
    try:
        if args.engine == "sparse":
            from .training.sparse_pipeline import run_pipeline
        elif args.engine == "cnn3d":
            from .training.cnn3d_pipeline import run_pipeline
        elif args.engine == "cascade":
            from .training.cascade_pipeline import run_pipeline
        else:
            raise InputError(f"organscope train knows the engines sparse, cnn3d and cascade, not {args.engine!r}.")
    except ImportError as exc:
        raise OrganscopeError(f"Training needs the train extra ({exc}); install it with "
                              "pip install 'organscope[train]'.") from None
    budget = {"epochs": args.epochs} if args.engine == "sparse" else {"hours": args.hours}
    return run_pipeline(data=args.data, work=args.work, name=args.name, install=args.install, **budget)


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .service.app import create_app
        from .service.security import LOOPBACK_HOSTS
    except ImportError as exc:
        raise OrganscopeError(f"organscope serve needs the serve extra ({exc}); install it with "
                              "pip install 'organscope[serve]'.") from None
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}.")
    if args.max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}.")
    import os

    token = args.token if args.token is not None else os.environ.get("ORGANSCOPE_TOKEN")
    if token is not None and len(token.strip()) < 16:
        raise InputError("--token must be at least 16 characters; use a long random string (e.g. from "
                         "python -c 'import secrets; print(secrets.token_urlsafe())').")
    loopback = args.host.strip("[]").lower() in LOOPBACK_HOSTS
    if not loopback and token is None:
        raise InputError(f"Listening on {args.host} lets other machines reach this server, so it needs "
                         "--token TOKEN (clients send 'Authorization: Bearer TOKEN'); or listen on 127.0.0.1.")
    hosts = list(args.allowed_host)
    if not loopback and args.host not in ("0.0.0.0", "::"):
        hosts.append(args.host)  # the address it listens on is a name clients use
    from .engines.registry import DEFAULT_QUERY_ENGINE

    _compile_notice(DEFAULT_QUERY_ENGINE, True, query=True)  # the store compiles them before it listens (store.py)
    app = create_app(allowed_dir=args.allow_dir, max_upload_mb=args.max_upload_mb, max_scans=args.max_scans,
                     preload=args.scan, max_voxels=args.max_voxels, max_jobs=args.max_jobs, allowed_hosts=hosts,
                     token=token)
    host = f"[{args.host}]" if ":" in args.host else args.host
    fragment = "#token=TOKEN" if token else ""
    print(f"organscope: viewer at http://{host}:{args.port}/{fragment} , API description at /docs", file=sys.stderr)
    import gc

    # everything loaded so far (numba, ONNX Runtime, the models, the preloaded scans) lives as long as the server:
    # out of the collector's sight, a full collection no longer walks it (it stalled every request in flight for
    # ~100 ms: bench_service's max latency, even with one client)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    # light: names and one line each, no engine
    from .engines.registry import DEFAULT_ENGINE, ENGINE_INFO, LOCALIZER_INFO

    ap = _Parser(prog="organscope", description="Which organ is where in a CT scan, on a CPU.",
                 formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=f"organscope {__version__}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)

    threads_help = "CPU threads, at least 1 (default: all cores)"
    organs_help = "organ names separated by commas, e.g. parotid_left,mandible"
    s = command("segment", "write a multi-organ label map of a scan (or of a folder or glob of scans)")
    s.add_argument("-i", "--input", required=True,
                   help="CT scan: .nii/.nii.gz/.nrrd/.mha or a DICOM folder; or a folder or a quoted glob "
                        "('DIR/*.nii.gz') of scans for a batch")
    s.add_argument("-o", "--output", required=True,
                   help="output label map (.nii.gz, .nii or .nrrd) + .json names; for a batch, an output folder")
    s.add_argument("--series-uid", default=None, metavar="UID",
                   help="DICOM folder with several CT series: the SeriesInstanceUID of the one to segment")
    s.add_argument("--engine", default=None, choices=list(ENGINE_INFO), metavar="ENGINE",
                   help=_engine_help(f"segmentation engine (default: {DEFAULT_ENGINE}; with --model, the model's "
                                     "engine):"))
    s.add_argument("--model", default=None, help="shipped model name or path to an .onnx with its .json card "
                                                 "(default: the engine's shipped model)")
    s.add_argument("--threads", type=_threads, default=None, metavar="N", help=threads_help)
    s.add_argument("--organs", type=_organ_list, default=None, metavar="NAME,NAME",
                   help=organs_help + " (slice2d runs only their models; other engines keep only their labels)")
    s.add_argument("--priors", action="store_true",
                   help="apply the anatomical-prior rules measured to help this engine (post-processing)")
    keep_help = ("keep organs that fail the anatomy check (scan outside the model's body region, implausible size "
                 "or place), marked unverified in the label map's .json")
    s.add_argument("--keep-unverified", action="store_true", help=keep_help)
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    s.add_argument("--statistics", nargs="?", const="", default=None, metavar="FILE.json",
                   help="per-organ volume (ml), mean/sd HU and centroid as JSON (default name: OUT.statistics.json)")
    s.add_argument("--preview", nargs="?", const="", default=None, metavar="FILE.png",
                   help="PNG of three orthogonal views with the labels and a legend (default: OUT.preview.png)")
    s.add_argument("--dicom-seg", nargs="?", const="", default=None, metavar="FILE.dcm",
                   help="DICOM-SEG of the result; the input must be a DICOM series (default: OUT.seg.dcm)")
    s.add_argument("--rtstruct", nargs="?", const="", default=None, metavar="FILE.dcm",
                   help="DICOM RT Structure Set of the result (TG-263 names); the input must be a DICOM series "
                        "(default: OUT.rtstruct.dcm)")
    s.add_argument("--masks", nargs="?", const="", default=None, metavar="DIR",
                   help="one NIfTI mask per organ found, in DIR (default: OUT_masks)")
    s.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="batch (-i FOLDER or GLOB, -o OUT_DIR): scans segmented at once (default: cores / 2)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="batch on a Dask distributed cluster at ADDRESS (e.g. tcp://host:8786)")
    s.set_defaults(func=cmd_segment)

    q = command("query", "organ, probability and top-3 at points of a scan")
    q.add_argument("scan", help="CT scan file or DICOM folder")
    q.add_argument("--point", action="append", metavar="X,Y,Z",
                   help="a point: world mm (RAS), or voxel indices with --voxel; repeat for several")
    q.add_argument("--csv", metavar="FILE", help="file with one x,y,z per line (one header line allowed)")
    q.add_argument("--voxel", action="store_true", help="points are voxel indices (i,j,k) of the scan's grid")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--model", default=None, help="sparse model name or path to an .onnx with its .json card "
                                                 "(default: the shipped one)")
    q.add_argument("--threads", type=_threads, default=None, metavar="N", help=threads_help)
    q.add_argument("--keep-unverified", action="store_true",
                   help="answer organs even in a scan outside the model's body region (marked unverified)")
    q.set_defaults(func=cmd_query)

    e = command("evaluate", "per-organ Dice/Jaccard/NSD/HD95 of label maps against references")
    e.add_argument("pred_dir", help="folder of predicted label maps (X.nii.gz, optional sidecar X.json); with a "
                                    ".dcm reference also one label map file")
    e.add_argument("ref_dir", help="folder of reference label maps with the same file names, or an RTSTRUCT or "
                                   "DICOM-SEG .dcm (its CT: the series in its folder, or --reference-series)")
    e.add_argument("--out", dest="out_prefix", default=None, metavar="PREFIX",
                   help="output prefix for .csv and .json (default: PRED_DIR/evaluation)")
    e.add_argument("--tolerance-mm", type=_positive_mm, default=2.0, metavar="MM",
                   help="NSD tolerance in mm (default 2)")
    e.add_argument("--dataset-json", default=None, metavar="FILE",
                   help="dataset.json with label names and contoured organs (default: found beside the references)")
    e.add_argument("--organs", type=_organ_list, default=None, metavar="NAME,NAME",
                   help="score only these organs: " + organs_help)
    e.add_argument("--reference-series", default=None, metavar="DIR",
                   help="the CT series folder an RTSTRUCT/DICOM-SEG reference is drawn on (default: the CT series "
                        "in the reference's folder)")
    e.set_defaults(func=cmd_evaluate)

    lo = command("locate", "per organ: present or not, centroid, box and confidence")
    lo.add_argument("scan", help="CT scan file or DICOM folder")
    lo.add_argument("--json", action="store_true", help="print {\"organs\": {name: {...}}} on stdout")
    lo.add_argument("-o", "--output", default=None, metavar="FILE.json", help="also write the JSON to this file")
    lo.add_argument("--localizer", default="sparse_grid", choices=list(LOCALIZER_INFO), metavar="LOCALIZER",
                    help="organ localiser:\n" + "\n".join(f"  {n}: {t}" for n, t in LOCALIZER_INFO.items()))
    lo.add_argument("--level-mm", type=_positive_mm, default=8.0, metavar="MM",
                    help="grid step of the sparse_grid localiser in mm (default 8)")
    lo.add_argument("--threads", type=_threads, default=None, metavar="N", help=threads_help)
    lo.add_argument("--keep-unverified", action="store_true",
                    help="report organs even in a scan outside the model's body region (with the reason)")
    lo.set_defaults(func=cmd_locate)

    c = command("convert", "RTSTRUCT or DICOM-SEG + its CT -> label map; label map + CT -> RTSTRUCT")
    c.add_argument("input", help="RTSTRUCT or DICOM-SEG (.dcm) -> label map; or a label map (.nii.gz/.nii/.nrrd "
                                 "with its .json names) -> RTSTRUCT")
    c.add_argument("-o", "--output", required=True,
                   help="label map (.nii.gz/.nii/.nrrd, + .json names) or RTSTRUCT (.dcm)")
    c.add_argument("--ct", default=None, metavar="DIR",
                   help="the CT series folder (default for a .dcm input: the CT series in its folder)")
    c.add_argument("--series-uid", default=None, metavar="UID", help="which CT series of the folder")
    c.add_argument("--rois", default=None, type=_organ_list, metavar="A,B",
                   help="only these ROIs (names as in the file, or organ names in any known spelling), separated "
                        "by commas")
    c.set_defaults(func=cmd_convert)

    m = command("models", "list the shipped models: body region, organs and recorded accuracy")
    m.set_defaults(func=cmd_models)

    trainable = ("sparse", "cnn3d", "cascade")
    t = command("train", "train a model: the sparse classifier, the cnn3d network or the cascade's group networks "
                         "(train extra)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder: images/ labels/ dataset.json")
    t.add_argument("--engine", default="sparse", choices=trainable, metavar="ENGINE",
                   help=_engine_help("engine to train (default: sparse; the cascade's group networks start from "
                                     "the cnn3d weights in the same --work folder):", trainable))
    t.add_argument("--work", type=Path, default=Path("work"), help="folder for training sets and checkpoints "
                                                                   "(default: work)")
    t.add_argument("--name", default=None, help="model name (default <engine>_openkbp; output <work>/<name>.onnx)")
    t.add_argument("--epochs", type=_positive_int, default=10, metavar="N", help="sparse: epochs (default 10)")
    t.add_argument("--hours", type=float, default=1.55,
                   help="cnn3d and cascade: time budget of the training run (cascade: shared by its groups)")
    t.add_argument("--install", action="store_true", help="copy the result into the package's models folder")
    t.set_defaults(func=cmd_train)

    v = command("serve", "HTTP API and browser viewer: point queries and segmentation (serve extra)")
    v.add_argument("scan", nargs="*", help="scans to open at start (more can be uploaded or opened by path)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="TCP port, 0..65535 (default 8000)")
    v.add_argument("--allow-dir", default=None, metavar="DIR",
                   help="folder whose scans clients may open by path (default: none, upload only)")
    v.add_argument("--max-upload-mb", type=float, default=512, metavar="N", help="upload size limit (default 512)")
    v.add_argument("--max-scans", type=_positive_int, default=4, metavar="N",
                   help="scans kept open in memory, least recently used closed first (default 4)")
    v.add_argument("--max-voxels", type=_positive_int, default=512 * 512 * 1024, metavar="N",
                   help="largest scan in voxels, checked in the header before reading (default 268435456 = "
                        "512x512x1024)")
    v.add_argument("--max-jobs", type=_positive_int, default=4, metavar="N",
                   help="segmentations queued or running at once; more are refused with 429 (default 4)")
    v.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the server answers to besides localhost, 127.0.0.1 and [::1] (repeatable)")
    v.add_argument("--token", default=None, metavar="TOKEN",
                   help="require 'Authorization: Bearer TOKEN' on the API (needed when --host is not loopback); "
                        "the viewer takes it from its URL: http://HOST:PORT/#token=TOKEN (default: the "
                        "ORGANSCOPE_TOKEN environment variable, which other users cannot see in ps)")
    v.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default: info)")
    v.set_defaults(func=cmd_serve)
    return ap


def _join_negative_points(argv: list[str]) -> list[str]:
    """`--point -10,5,3` would read as an option to argparse; make it `--point=-10,5,3`."""
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if tok == "--point":
            nxt = next(it, None)
            if nxt is not None and re.match(r"^-[\d.]", nxt):
                out.append(f"--point={nxt}")
                continue
            out.append(tok)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(tok)
    return out

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _unrecognized(argv: list[str], extra: list[str]) -> str:
    """argparse's "unrecognized arguments" with a hint for the two usual causes: a glob the shell expanded into
    several file names, and an organ list written with spaces after its commas."""
    message = f"unrecognized arguments: {' '.join(extra)}"
    if any(argv[i].endswith(",") for i in range(len(argv) - 1) if argv[i + 1] in extra):
        return message + "; write an organ list as one word, --organs a,b (or quote it: --organs 'a, b')"
    if argv[:1] == ["segment"] and any(e.lower().endswith(_VOLUME_SUFFIXES) or Path(e).exists() for e in extra):
        return (message + "; the shell expanded a pattern into several files: quote the pattern so that organscope "
                "sees it, e.g. -i 'scans/*.nii.gz'")
    return message


class Terminated(BaseException):
    """SIGTERM (or SIGHUP), raised in the main thread so that every `except BaseException` clean-up runs: staged
    outputs are removed and files that were there before are kept, as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP -> Terminated (SIGINT already raises KeyboardInterrupt); returns the old handlers."""
    old = {}
    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_terminated}
    if hasattr(signal, "SIGHUP"):
        wanted[signal.SIGHUP] = _raise_terminated
    for sig, handler in wanted.items():
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave the handlers alone
            old[sig] = signal.signal(sig, handler)  # SIGINT too: a background job starts with it ignored
    return old


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"organscope: warning: {text}", file=sys.stderr if file is None else file)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    argv = _join_negative_points(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(_unrecognized(argv, extra))
    old_handlers = install_signal_handlers()
    old_show = warnings.showwarning
    if warnings.showwarning is _ORIGINAL_SHOWWARNING:  # not when a test records warnings
        warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except OrganscopeError as exc:
        print(f"organscope: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("organscope: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("organscope: terminated; no partial output was left", file=sys.stderr)
        return 128 + exc.signum
    except MemoryError:
        print("organscope: error: out of memory; the scan is too large for this machine (try --threads 1 or a "
              "machine with more memory).", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"organscope: error: cannot access{where}: {exc.strerror or type(exc).__name__}.", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, with the traceback only on request
        if os.environ.get("ORGANSCOPE_DEBUG"):
            raise
        print(f"organscope: error: unexpected {type(exc).__name__}: {_one_line(exc)[:300]} (a bug in organscope: "
              "run again with ORGANSCOPE_DEBUG=1 for the traceback and report it).", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = old_show
        for sig, handler in old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


_ORIGINAL_SHOWWARNING = warnings.showwarning


def _exit_now(signum, frame):
    os._exit(128 + signum)


def entry() -> None:
    """The `organscope` command (and `python -m organscope.cli`): main, then exit with its status. Once main has
    returned, its outputs are whole (or were never left), so a SIGINT or SIGTERM during the interpreter's shutdown
    ends the process at once (status 128 + the signal) instead of raising inside a library's finaliser, which
    printed "Exception ignored ... KeyboardInterrupt" with a traceback (numba's llvmlite, seen in tests/test_kill.py
    when the signal landed just after a run)."""
    rc = main()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # what main printed reaches a pipe even if a signal ends the process below
        sys.stderr.flush()
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, _exit_now)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
