#!/usr/bin/env python
"""Seconds per scan and peak memory: organscope's engines (cnn3d, sparse, slice2d, cascade, ensemble) against two peers, same input.

    python benchmarks/bench_cnn3d.py                       # 512x512x300 scan, 3 runs per method (long: see README)
    python benchmarks/bench_cnn3d.py --quick               # smoke run: small scan, 1 run per method
    python benchmarks/bench_cnn3d.py --json figures.json   # also save every figure
    python benchmarks/bench_cnn3d.py --peers none          # organscope engines only

Every run of every method is a fresh subprocess (clean peak RSS): it loads the scan, loads the method
(reported separately), warms it up on something small, then times one segmentation of the whole scan on its
own grid. The peers (MONAI SegResNet, wholeBody_ct_segmentation bundle at 3 mm; nnU-Net PlainConvUNet as in
TotalSegmentator --fast) run with RANDOM weights on CPU with PyTorch: their trained weights cannot be had
here, so only speed and memory are compared. Their configurations and sources are in benchmarks/_peers.py and
in the printed header. Peers need the optional extra `.[peers]`; without it the organscope engines still run.
Nothing here passes or fails on a timing; environment variables are left alone (threads are set through
torch.set_num_threads, numba.set_num_threads and the engines' `threads=`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _peers as P  # noqa: E402
from bench_sparse import DEFAULT_SCAN, _phantom, build_scan, set_numba_threads  # noqa: E402

FULL = dict(shape=(512, 512, 300), spacing=(0.8, 0.8, 1.5), repeats=3)
# --quick: a small field of view (256 x 256 x 288 mm) so that each peer runs a single tile
QUICK = dict(shape=(160, 160, 96), spacing=(1.6, 1.6, 3.0), repeats=1)

OUR_ENGINES = ("cnn3d", "sparse", "slice2d", "cascade", "ensemble")
AIM_CNN3D_S = 2.0        # issue 3: cnn3d <= 2 s per scan on the 2-core machine (the paper: 1.6 s on 16 cores)
AIM_SPEEDUP = 10.0       # issue 3: >= 10x faster than both peers


# ----------------------------------------------------------------------------------------------------------
# child processes: one timed segmentation each
# ----------------------------------------------------------------------------------------------------------
def _load(nii: Path, rec: dict):
    import organscope as osc

    rec["rss_start_mib"] = C.current_rss_mib()
    t = time.perf_counter()
    vol = osc.load_volume(nii)
    int(np.asarray(vol.array).max())  # page the memory-mapped data in before anything is timed
    rec["load_scan_s"] = time.perf_counter() - t
    rec["rss_after_load_mib"] = C.current_rss_mib()
    return vol


def child_engine(name: str, nii: Path, threads: int, model: str | None) -> dict:
    """organscope.api.segment(volume, engine=name) on the loaded Volume, timed once."""
    import organscope.api as api

    rec: dict = {"kind": "engine", "name": name}
    vol = _load(nii, rec)
    set_numba_threads(threads)  # every engine resamples or refines with numba
    from organscope.errors import ModelError

    t = time.perf_counter()
    try:
        eng = api.engine(name, model=model, threads=threads)   # the same cached instance api.segment uses
    except ModelError as e:  # no (shipped) model: reported as unavailable, not as a failure
        rec["unavailable"] = str(e)
        return rec
    rec["model_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        eng.segment(_phantom())
        rec["warmup_s"] = time.perf_counter() - t
    except Exception as e:  # a warm-up failure is reported, the timed run still happens
        rec["warmup_error"] = f"{type(e).__name__}: {e}"
    rec["rss_after_warmup_mib"] = C.current_rss_mib()
    t = time.perf_counter()
    seg = api.segment(vol, engine=name, model=model, threads=threads)
    rec["segment_s"] = time.perf_counter() - t
    rec["peak_rss_mib"] = C.peak_rss_mib()
    rec["output_on_input_grid"] = bool(seg.labels.shape == vol.shape and np.allclose(seg.labels.affine, vol.affine))
    rec["labels_present"] = int(len(np.unique(seg.labels.array)))
    rec["engine_timings_s"] = {k: float(v) for k, v in seg.timings_s.items()}
    return rec


def child_peer(key: str, nii: Path, threads: int) -> dict:
    """A peer's whole path (resample, normalise, sliding window, softmax/argmax, labels back), timed once."""
    import torch

    torch.set_num_threads(threads)
    rec: dict = {"kind": "peer", "name": key, "torch_threads": torch.get_num_threads()}
    vol = _load(nii, rec)
    array = np.asarray(vol.array)
    spacing = tuple(float(s) for s in vol.spacing_mm)
    t = time.perf_counter()
    net = P.build_network(key)
    rec["model_load_s"] = time.perf_counter() - t   # construction + random initialisation (no weights file)
    rec["parameters"] = P.n_parameters(net)
    t = time.perf_counter()
    P.warm_up(net)
    rec["warmup_s"] = time.perf_counter() - t
    rec["rss_after_warmup_mib"] = C.current_rss_mib()
    phases: dict = {}
    t = time.perf_counter()
    labels = P.RUNNERS[key](net, array, spacing, phases)
    rec["segment_s"] = time.perf_counter() - t
    rec["peak_rss_mib"] = C.peak_rss_mib()
    rec["phases_s"] = {k: float(v) for k, v in phases.items() if k != "tiles"}
    rec["tiles"] = int(phases.get("tiles", 0))
    rec["output_on_input_grid"] = bool(labels.shape == array.shape)
    return rec


def run_child(kind: str, name: str, nii: Path, threads: int, model: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, name, str(nii), "--threads", str(threads)]
    if model:
        cmd += ["--child-model", model]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
        return {"kind": kind, "name": name, "error": f"exit {p.returncode}: " + " | ".join(tail)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_method(kind: str, name: str, nii: Path, threads: int, model: str | None, repeats: int,
               budget: float | None) -> dict:
    runs: list[dict] = []
    t0 = time.perf_counter()
    for i in range(repeats):
        r = run_child(kind, name, nii, threads, model)
        if "unavailable" in r:
            return {"name": name, "kind": kind, "unavailable": r["unavailable"], "runs": runs}
        if "error" in r:
            return {"name": name, "kind": kind, "error": r["error"], "runs": runs}
        runs.append(r)
        if budget and i + 1 < repeats and time.perf_counter() - t0 > budget:
            print(f"NOTE: {name}: stopped after {i + 1} of {repeats} runs ({time.perf_counter() - t0:.0f} s, over "
                  f"--budget {budget:g} s); its figures are from fewer runs than asked")
            break
    secs = [r["segment_s"] for r in runs]
    s = {"name": name, "kind": kind, "runs": runs, "n_runs": len(runs), "runs_requested": repeats,
         "segment_s": C.median(secs), "segment_min_s": min(secs), "segment_max_s": max(secs),
         "model_load_s": C.median([r["model_load_s"] for r in runs]),
         "warmup_s": C.median([r.get("warmup_s", float("nan")) for r in runs]),
         "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
         "peak_above_loaded_mib": max(r["peak_rss_mib"] - r["rss_after_load_mib"] for r in runs),
         "output_on_input_grid": all(r["output_on_input_grid"] for r in runs)}
    if kind == "peer":
        s["parameters"] = runs[0]["parameters"]
        s["tiles"] = runs[0]["tiles"]
        mid = sorted(runs, key=lambda r: r["segment_s"])[(len(runs) - 1) // 2]
        s["phases_s_median_run"] = mid["phases_s"]
    return s


# ----------------------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------------------
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "monai", "dynamic-network-architectures", "onnxruntime", "numba"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def print_header(info: dict, args, sizes: dict, threads: int, engines, peers, skipped_peers, versions,
                 models: dict) -> None:
    print("organscope cnn3d benchmark: organscope engines vs. peers, seconds per scan"
          + ("  [--quick: smoke-test sizes, figures not comparable]" if args.quick else ""))
    print(f"machine: {info['cpu_model']}; {info['cores_available']} cores available "
          f"({info['logical_cpus']} logical CPUs); {info['platform']}")
    la = info["load_average"]
    busy = "  <- other work is running: timings are inflated/noisy" if la and la[0] > 0.5 else ""
    print(f"load average: {'n/a' if not la else ', '.join(f'{x:.2f}' for x in la)}{busy}")
    print(f"threads: {threads} for every method (torch.set_num_threads / numba / ONNX Runtime via threads=); "
          f"env: {info['env'] or 'none of ' + ', '.join(C.ENV_SHOWN)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + f", python {info['python']}")
    print(f"scan: {args.scan.name} resampled (order 1) to {'x'.join(map(str, sizes['shape']))} at "
          f"{'x'.join(f'{s:g}' for s in sizes['spacing'])} mm; {sizes['repeats']} run(s) per method, each a fresh "
          "process; medians shown")
    print("organscope engines: " + (", ".join(f"{e} (model: {models.get(e) or 'the shipped default'})"
                                              for e in engines) or "none"))
    print(f"peers: {', '.join(peers) or 'none'}" + (f"; skipped: {'; '.join(skipped_peers)}" if skipped_peers else ""))
    if peers:
        print(C.rule("Peer configurations (RANDOM weights, PyTorch on CPU, float32; speed only)"))
        for key in peers:
            spec = P.PEERS[key]
            grid, tiles = P.tiles_for(key, sizes["shape"], sizes["spacing"])
            print(f"[{key}] {spec.title}")
            print(f"    network: {', '.join(f'{k}={v}' for k, v in spec.network.items())}")
            print(f"    input: resampled to {spec.spacing_mm:g} mm (torch trilinear) -> grid {'x'.join(map(str, grid))}; "
                  f"patch {'x'.join(map(str, spec.patch))} in {spec.axis_note}; {tiles} tile(s)")
            norm = ("NormalizeIntensity(nonzero=True) then ScaleIntensity(-1, 1)" if key == "monai" else
                    f"CTNormalization: clip {P.NNUNET_CT_CLIP}, (x - {P.NNUNET_CT_MEAN:.3f}) / {P.NNUNET_CT_STD:.3f}")
            print(f"    normalise: {norm}")
            print(f"    sliding window: {spec.sliding}; then softmax + argmax, labels back by nearest neighbour")
            for src in spec.sources:
                print(f"    source: {src}")
        print("    (both: file I/O and tool start-up not timed; trilinear instead of the tools' own resampling; "
              "see benchmarks/_peers.py)")


def _fmt_method(s: dict) -> str:
    if "unavailable" in s:
        return f"{s['name']:<22} not measured: {s['unavailable']}"
    if "error" in s:
        return f"{s['name']:<22} FAILED: {s['error']}"
    n = s["n_runs"]
    rng = f"{s['segment_min_s']:.2f}-{s['segment_max_s']:.2f}" if n > 1 else "-"
    warm = "n/a" if s["warmup_s"] != s["warmup_s"] else f"{s['warmup_s']:.2f}"
    grid = "" if s["output_on_input_grid"] else "  OUTPUT NOT ON THE INPUT GRID"
    return (f"{s['name']:<22}{s['segment_s']:>10.2f}{rng:>15}{n:>5}{s['model_load_s']:>9.2f}{warm:>9}"
            f"{s['peak_rss_mib']:>10.0f}{s['peak_above_loaded_mib']:>10.0f}{grid}")


HEAD = (f"{'method':<22}{'s/scan':>10}{'min-max':>15}{'runs':>5}{'load s':>9}{'warm s':>9}"
        f"{'peak MiB':>10}{'+loaded':>10}")


def print_results(ours: dict, peers: dict) -> None:
    print(C.rule("1. Seconds per scan (median of runs) and peak memory, each run a fresh process"))
    print("s/scan = the timed segmentation of the loaded scan (label map on the input grid); load s = engine/model "
          "load (peers: build + random init); warm s = warm-up on a small input; peak MiB = ru_maxrss of the "
          "process, +loaded = peak above the RSS after loading the scan")
    print(HEAD)
    for s in ours.values():
        print(_fmt_method(s))
    for s in peers.values():
        print(_fmt_method(s))
    ok_peers = {k: s for k, s in peers.items() if "segment_s" in s}
    if ok_peers:
        print(C.rule("2. Peers: parameters and where their time goes (the median run)"))
        print(f"{'peer':<22}{'params':>12}{'tiles':>6}{'resample':>10}{'normalise':>10}{'sliding':>10}"
              f"{'softmax+argmax':>15}{'labels back':>12}")
        for k, s in ok_peers.items():
            ph = s["phases_s_median_run"]
            print(f"{k:<22}{s['parameters']:>12,}{s['tiles']:>6}{ph['resample_in']:>10.2f}{ph['normalise']:>10.2f}"
                  f"{ph['sliding_window']:>10.2f}{ph['softmax_argmax']:>15.2f}{ph['resample_out']:>12.2f}")


def print_ratios(ours: dict, peers: dict, quick: bool, peers_asked: bool, cnn3d_model: str | None) -> dict:
    print(C.rule("3. Ratios (peer s/scan / ours) and the issue's aims"))
    ratios: dict = {}
    ok_ours = {k: s for k, s in ours.items() if "segment_s" in s}
    ok_peers = {k: s for k, s in peers.items() if "segment_s" in s}
    if not ok_peers:
        print("no peer measured: " + ("install the extra to compare -- " + P.PEERS_EXTRA if peers_asked and not peers
                                      else "--peers none" if not peers_asked else "every peer run failed"))
    for pk, ps in ok_peers.items():
        for ok, os_ in ok_ours.items():
            r = ps["segment_s"] / os_["segment_s"]
            ratios[f"{pk}/{ok}"] = r
            mem = ps["peak_rss_mib"] / os_["peak_rss_mib"]
            print(f"{pk:<22} / {ok:<8} {r:>8.1f}x the time   {mem:>6.1f}x the peak memory")
    note = "  (--quick sizes: not the issue's 512x512x300 scan)" if quick else ""
    if cnn3d_model:
        note += f"  (cnn3d model {Path(cnn3d_model).name}: not the shipped one)"
    if note:
        note = " on these figures, which do not count for the aim:" + note
    c = ok_ours.get("cnn3d")
    if c is None:
        from organscope.engines.registry import ENGINES

        why = ("not registered in ENGINES yet" if "cnn3d" not in ENGINES else "not in --engines" if "cnn3d" not in ours else
               ours["cnn3d"].get("unavailable") or ours["cnn3d"].get("error", ""))
        print(f"aim: cnn3d <= {AIM_CNN3D_S:g} s per scan -- cnn3d not measured ({why}); pass --cnn3d-model PATH.onnx "
              "(with its .json card) or ship the model")
    else:
        met = "MET" if c["segment_s"] <= AIM_CNN3D_S else "NOT MET"
        print(f"aim: cnn3d <= {AIM_CNN3D_S:g} s per scan          measured {c['segment_s']:.2f} s -> {met}{note}")
        if ok_peers:
            worst = min(ratios[f"{pk}/cnn3d"] for pk in ok_peers)
            met = "MET" if worst >= AIM_SPEEDUP and len(ok_peers) == 2 else "NOT MET"
            if len(ok_peers) < 2:
                met += " (only one peer measured)"
            print(f"aim: cnn3d >= {AIM_SPEEDUP:g}x faster than both peers   measured "
                  + ", ".join(f"{ratios[f'{pk}/cnn3d']:.1f}x vs {pk}" for pk in ok_peers) + f" -> {met}{note}")
    s = ok_ours.get("sparse")
    if s is not None and ok_peers:
        print("(sparse engine, for reference: " + ", ".join(f"{ratios[f'{pk}/sparse']:.1f}x vs {pk}"
                                                            for pk in ok_peers) + ")")
    return ratios


# ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 160x160x96 scan at 1.6x1.6x3 mm (one tile per peer), 1 run per method")
    ap.add_argument("--repeats", type=int, default=None, help="runs per method, each a fresh process (default 3; quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every method (default: cores available)")
    ap.add_argument("--engines", default=",".join(OUR_ENGINES),
                    help="organscope engines, comma-separated (default cnn3d,sparse,slice2d,cascade; those not registered are skipped)")
    ap.add_argument("--peers", default="monai,nnunet", help="peers, comma-separated: monai, nnunet, or 'none'")
    ap.add_argument("--cnn3d-model", help="model path for the cnn3d engine (default: its shipped model)")
    ap.add_argument("--sparse-model", help="model path for the sparse engine (default: its shipped model)")
    ap.add_argument("--budget", type=float, default=None,
                    help="stop repeating a method once its runs have taken this many seconds (default: no limit)")
    ap.add_argument("--scan", type=Path, default=DEFAULT_SCAN, help="real scan to resample (default: bundled example)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "organscope-bench",
                    help="folder for the resampled .nii (built once; shared with bench_sparse.py)")
    ap.add_argument("--json", type=Path, help="save all figures to this JSON file")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "NAME", "NII"), help=argparse.SUPPRESS)
    ap.add_argument("--child-model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or C.available_cores()

    if args.child:
        kind, name, nii = args.child
        rec = (child_engine(name, Path(nii), threads, args.child_model) if kind == "engine"
               else child_peer(name, Path(nii), threads))
        print(json.dumps(rec))
        return 0

    from organscope.engines.registry import ENGINES

    sizes = dict(QUICK if args.quick else FULL)
    if args.repeats:
        sizes["repeats"] = args.repeats
    asked = [e.strip() for e in args.engines.split(",") if e.strip()]
    engines = [e for e in asked if e in ENGINES]
    for e in asked:
        if e not in ENGINES:
            print(f"NOTE: organscope engine {e!r} is not registered (ENGINES: {', '.join(ENGINES)}); skipped")
    want_peers = [] if args.peers.strip().lower() in ("", "none") else [p.strip() for p in args.peers.split(",")]
    for p in want_peers:
        if p not in P.PEERS:
            ap.error(f"unknown peer {p!r}; choose from {', '.join(P.PEERS)} or 'none'")
    peers, skipped = [], []
    for p in want_peers:
        miss = P.missing(p)
        if miss:
            skipped.append(f"{p} ({miss} not installed)")
        else:
            peers.append(p)
    if skipped:
        print(f"NOTE: peers skipped: {'; '.join(skipped)}. Install the optional extra: {P.PEERS_EXTRA}")
    models = {"cnn3d": args.cnn3d_model, "sparse": args.sparse_model}

    info = C.machine_info()
    versions = _versions()
    print_header(info, args, sizes, threads, engines, peers, skipped, versions, models)
    out: dict = {"machine": info, "versions": versions, "quick": args.quick, "sizes": sizes, "threads": threads,
                 "aims": {"cnn3d_s_per_scan": AIM_CNN3D_S, "speedup_vs_each_peer": AIM_SPEEDUP},
                 "peer_configs": {k: {"title": P.PEERS[k].title, "network": P.PEERS[k].network,
                                      "patch": P.PEERS[k].patch, "spacing_mm": P.PEERS[k].spacing_mm,
                                      "sliding": P.PEERS[k].sliding, "sources": P.PEERS[k].sources}
                                  for k in peers},
                 "skipped_peers": skipped, "models": models,
                 "engines_not_registered": [e for e in asked if e not in ENGINES]}
    t_start = time.perf_counter()

    nii, built = build_scan(args.scan, sizes["shape"], sizes["spacing"], args.cache)
    print(f"\nscan file: {nii} ({'built in %.1f s' % built if built is not None else 'cached'}; "
          f"{nii.stat().st_size / 2**20:.0f} MiB uncompressed)")

    ours: dict = {}
    for e in engines:
        print(f"... {e}: {sizes['repeats']} run(s)", flush=True)
        ours[e] = run_method("engine", e, nii, threads, models.get(e), sizes["repeats"], args.budget)
    pres: dict = {}
    for p in peers:
        print(f"... {p}: {sizes['repeats']} run(s)", flush=True)
        pres[p] = run_method("peer", p, nii, threads, None, sizes["repeats"], args.budget)

    print_results(ours, pres)
    out["ratios"] = print_ratios(ours, pres, args.quick, bool(want_peers), args.cnn3d_model)
    out["organscope"] = ours
    out["peers"] = pres
    out["wall_s"] = time.perf_counter() - t_start
    print(f"\nbenchmark wall time {out['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
        print(f"figures saved to {args.json}")
    return 1 if any("error" in s for s in list(ours.values()) + list(pres.values())) else 0


if __name__ == "__main__":
    sys.exit(main())
