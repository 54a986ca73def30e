"""organscope command line: segment | query | evaluate | convert | models | train | serve.

Heavy modules are imported inside the commands so that `organscope --help` starts instantly.
Every OrganscopeError becomes one line on stderr and exit status 2; no partial output is left behind.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

from .errors import InputError, OrganscopeError


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
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give organ names separated by commas, e.g. parotid_left,mandible")
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


def cmd_segment(args) -> int:
    from . import api, batch

    if batch.is_batch_input(args.input):  # a folder of scans or a glob: -o is an output folder
        if args.series_uid is not None:
            raise InputError("--series-uid picks one series of one DICOM folder; it cannot be used with "
                             "several scans.")
        return batch.cmd_batch(args)
    from .io import load_volume
    from .outputs import write_outputs

    targets = batch.single_targets(args.output, batch.extras_from_args(args, batch=False))
    ct = load_volume(args.input, series_uid=args.series_uid)
    if targets.dicom_seg is not None or targets.rtstruct is not None:
        from .outputs.dicom_seg import require_dicom_source

        require_dicom_source(ct, "A DICOM-SEG" if targets.dicom_seg is not None else "An RTSTRUCT")
    progress, close = _progress_bar(args.progress if args.progress is not None else sys.stderr.isatty())
    try:
        seg = api.segment(ct, engine=args.engine, model=args.model, threads=args.threads,
                          organs=args.organs, priors=args.priors, progress=progress)
    finally:
        close()
    write_outputs(ct, seg, targets, engine=args.engine, model=args.model)
    t = seg.timings_s
    present = sorted({seg.names[int(v)] for v in api.present_labels(seg)})
    points = f", {int(t['points_classified'])} points classified" if "points_classified" in t else ""
    print(f"{args.output}: {len(present)} organ(s) found ({', '.join(present) or 'none'}); "
          f"{t['total']:.2f} s{points}", file=sys.stderr)
    return 0


def cmd_query(args) -> int:
    import numpy as np

    from . import api

    points = [_parse_point(p) for p in args.point or []]
    if args.csv:
        points += _read_points_csv(Path(args.csv))
    if not points:
        raise InputError("Give at least one point with --point x,y,z or --csv FILE.")
    res = api.query(args.scan, np.array(points), voxel=args.voxel, model=args.model, threads=args.threads)
    unit = "vox" if args.voxel else "mm"
    if args.json:
        out = [{"point": p, "unit": unit, "organ": n, "probability": round(float(pr), 4),
                "top3": [{"organ": a, "probability": round(float(b), 4)} for a, b in zip(tn, tp)]}
               for p, n, pr, tn, tp in zip(points, res.names, res.probability, res.top3_names, res.top3_probability)]
        print(json.dumps({"points": out}, indent=1))
        return 0
    print(f"{'x':>8} {'y':>8} {'z':>8} ({unit})  {'organ':<16} {'p':>6}  top-3")
    for p, n, pr, tn, tp in zip(points, res.names, res.probability, res.top3_names, res.top3_probability):
        top = ", ".join(f"{a} {b:.2f}" for a, b in zip(tn, tp))
        print(f"{p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f}        {n:<16} {pr:6.3f}  {top}")
    return 0


def cmd_locate(args) -> int:
    from .io import load_volume
    from .io._common import atomic_paths
    from .localize import locations_to_json

    vol = load_volume(args.scan)
    timings: dict = {}
    if args.localizer == "heatmap":
        from .localize.heatmap import HeatmapLocalizer

        locs = HeatmapLocalizer(threads=args.threads).locate(vol, timings=timings)
    else:  # sparse_grid (argparse allows only the two)
        from .localize.sparse_grid import locate

        locs = locate(vol, timings=timings, level_mm=args.level_mm)
    doc = locations_to_json(locs)
    text = json.dumps(doc)
    if args.output:
        with atomic_paths(args.output) as (tmp,):
            tmp.write_text(text + "\n")
    if args.json:
        print(text)
        return 0
    print(f"{'organ':<16} {'present':<8} {'conf':>5}  {'centroid (mm, RAS)':<26} box (voxels of the input grid)")
    for name, loc in locs.items():
        if loc.present:
            c = ", ".join(f"{v:.1f}" for v in loc.centroid_mm)
            print(f"{name:<16} {'yes':<8} {loc.confidence:5.2f}  {c:<26} {list(loc.box_voxels[0])}-{list(loc.box_voxels[1])}")
        else:
            print(f"{name:<16} {'no':<8} {'':>5}")
    extra = f", {int(timings['points_classified'])} points classified" if "points_classified" in timings else ""
    print(f"{timings['total']:.2f} s ({args.localizer}){extra}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .engines.sparse.model import MODELS_DIR

    for card_path in sorted(MODELS_DIR.glob("*.json")):
        card = json.loads(card_path.read_text())
        val = card.get("validation", {})
        organs = card.get("classes", ["background", *card.get("organs", [])])
        n_organs = len(organs) - 1 if organs and organs[0] == "background" else len(organs)
        if card.get("engine") == "locate":
            own = val.get("heatmap", {})  # its trainer scores both localisers; this card is the heat-map one
            score = (f"median_centroid_error_mm={own.get('median_centroid_error_mm', float('nan')):.1f} "
                     f"mean_box_recall={own.get('mean_box_recall', float('nan')):.3f}")
        else:
            dice = val.get("mean_dice", val.get("mean", {}).get("dice"))
            score = f"validation_mean_dice={'n/a' if dice is None else f'{dice:.4f}'}"
            if "point_accuracy" in val:
                score += f" point_accuracy={val['point_accuracy']:.4f}"
        print(f"{card_path.stem}: engine={card.get('engine')} organs={n_organs} trained={card.get('date')} {score}")
    return 0


def cmd_evaluate(args) -> int:
    from .metrics.report import run_evaluate

    return run_evaluate(args)


def cmd_convert(args) -> int:
    from .convert import run_convert

    return run_convert(args)


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
    return run_pipeline(args)


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .service.app import create_app
    except ImportError as exc:
        raise OrganscopeError(f"organscope serve needs the serve extra ({exc}); install it with "
                              "pip install 'organscope[serve]'.") from None
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}.")
    if args.max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}.")
    app = create_app(allowed_dir=args.allow_dir, max_upload_mb=args.max_upload_mb, max_scans=args.max_scans,
                     preload=args.scan)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"organscope: warning: listening on {args.host}: other machines can reach this server, which "
              "has no authentication.", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"organscope: viewer at http://{host}:{args.port}/ , API description at /docs", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="organscope", description="Which organ is where in a CT scan, on a CPU.")
    ap.add_argument("--version", action="version", version=f"organscope {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="write a multi-organ label map of a scan")
    s.add_argument("-i", "--input", required=True, help="CT scan: .nii/.nii.gz/.nrrd/.mha or a DICOM folder")
    s.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nii or .nrrd) + .json names")
    s.add_argument("--series-uid", default=None, metavar="UID",
                   help="DICOM folder with several CT series: the SeriesInstanceUID of the one to segment")
    s.add_argument("--engine", default="sparse", help="segmentation engine (default: sparse)")
    s.add_argument("--model", default=None, help="shipped model name or path to an .onnx with its .json card")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument("--organs", type=_organ_list, default=None, metavar="NAME,NAME",
                   help="only these organs (slice2d runs only their models; other engines keep only their labels)")
    s.add_argument("--priors", action="store_true",
                   help="apply the anatomical-prior rules measured to help this engine (post-processing)")
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
    s.add_argument("--jobs", type=int, default=None,
                   help="batch (-i FOLDER or GLOB, -o OUT_DIR): scans segmented at once (default: cores / 2)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="batch on a Dask distributed cluster at ADDRESS (e.g. tcp://host:8786)")
    s.set_defaults(func=cmd_segment)

    q = sub.add_parser("query", help="organ, probability and top-3 at points of a scan")
    q.add_argument("scan")
    q.add_argument("--point", action="append", metavar="X,Y,Z", help="world mm (RAS), or voxel indices with --voxel")
    q.add_argument("--csv", help="file with one x,y,z per line")
    q.add_argument("--voxel", action="store_true", help="points are voxel indices (i,j,k) of the scan's grid")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--model", default=None)
    q.add_argument("--threads", type=int, default=None)
    q.set_defaults(func=cmd_query)

    from .metrics.report import add_evaluate_arguments

    e = sub.add_parser("evaluate", help="per-organ Dice/Jaccard/NSD/HD95 of label maps against references")
    add_evaluate_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    lo = sub.add_parser("locate", help="per organ: present or not, centroid, box and confidence")
    lo.add_argument("scan", help="CT scan file or DICOM folder")
    lo.add_argument("--json", action="store_true", help="print {\"organs\": {name: {...}}} on stdout")
    lo.add_argument("-o", "--output", default=None, help="also write the JSON to this file")
    lo.add_argument("--localizer", default="sparse_grid", choices=("sparse_grid", "heatmap"),
                    help="sparse_grid: the sparse classifier's coarse grid (default); heatmap: the heat-map network")
    lo.add_argument("--level-mm", type=float, default=8.0, help="grid step of the sparse localiser (default 8 mm)")
    lo.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    lo.set_defaults(func=cmd_locate)

    c = sub.add_parser("convert", help="RTSTRUCT or DICOM-SEG + its CT -> label map; label map + CT -> RTSTRUCT")
    c.add_argument("input", help="RTSTRUCT or DICOM-SEG (.dcm) -> label map; or a label map (.nii.gz/.nii/.nrrd "
                                 "with its .json names) -> RTSTRUCT")
    c.add_argument("-o", "--output", required=True,
                   help="label map (.nii.gz/.nii/.nrrd, + .json names) or RTSTRUCT (.dcm)")
    c.add_argument("--ct", default=None, metavar="DIR",
                   help="the CT series folder (default for a .dcm input: the CT series in its folder)")
    c.add_argument("--series-uid", default=None, metavar="UID", help="which CT series of the folder")
    c.add_argument("--rois", default=None, type=_organ_list, metavar="A,B",
                   help="only these ROIs (names as in the file, or organ names in any known spelling)")
    c.set_defaults(func=cmd_convert)

    m = sub.add_parser("models", help="list the shipped models and their recorded accuracy")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a model: the sparse classifier, the cnn3d network or the cascade's "
                                     "group networks (train extra)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder: images/ labels/ dataset.json")
    t.add_argument("--engine", default="sparse", help="sparse (default), cnn3d or cascade (after cnn3d: its "
                                                        "group networks start from the cnn3d weights)")
    t.add_argument("--work", type=Path, default=Path("work"), help="folder for training sets and checkpoints")
    t.add_argument("--name", default=None, help="model name (default <engine>_openkbp; output <work>/<name>.onnx)")
    t.add_argument("--epochs", type=int, default=10, help="sparse: epochs")
    t.add_argument("--hours", type=float, default=1.55,
                   help="cnn3d and cascade: time budget of the training run (cascade: shared by its groups)")
    t.add_argument("--install", action="store_true", help="copy the result into the package's models folder")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("serve", help="HTTP API and browser viewer: point queries and segmentation (serve extra)")
    v.add_argument("scan", nargs="*", help="scans to open at start (more can be uploaded or opened by path)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--allow-dir", default=None, metavar="DIR",
                   help="folder whose scans clients may open by path (default: none, upload only)")
    v.add_argument("--max-upload-mb", type=float, default=512, metavar="N", help="upload size limit (default 512)")
    v.add_argument("--max-scans", type=int, default=4, metavar="N",
                   help="scans kept open in memory, least recently used closed first (default 4)")
    v.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
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


def main(argv=None) -> int:
    argv = _join_negative_points(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OrganscopeError as exc:
        print(f"organscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("organscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
