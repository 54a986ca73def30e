#!/usr/bin/env python
"""Speed and memory of the sparse engine: point queries, batches, full segmentation, and baselines.

    python benchmarks/bench_sparse.py                      # shipped model, ~1-3 minutes on 2 cores
    python benchmarks/bench_sparse.py --model /path/m.onnx # any model with the same interface (card beside it)
    python benchmarks/bench_sparse.py --quick              # CI smoke run: small sizes, few repeats
    python benchmarks/bench_sparse.py --json figures.json  # also save every figure

Figures are medians of repeated runs; nothing here passes or fails on a timing. See benchmarks/README.md for
what each figure means. Environment variables are left alone: numba and ONNX Runtime threads are set
through their APIs (numba.set_num_threads, the engine's `threads=`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCAN = REPO / "src" / "organscope" / "data" / "okbp_validation_222.nii.gz"

FULL = dict(shape=(512, 512, 300), spacing=(0.8, 0.8, 1.5), n_batch=10_000, n_click=200, n_dense=50_000,
            repeats=5, seg_repeats=3)
QUICK = dict(shape=(256, 256, 150), spacing=(1.6, 1.6, 3.0), n_batch=1_000, n_click=50, n_dense=5_000,
             repeats=3, seg_repeats=1)

PAPER_MS_PER_POINT = 0.92       # Real Time Multi Organ Classification on CT: 0.92 +- 0.01 ms per query
PAPER_S_PER_SCAN = 9.51         # fine segmentation 9.51 +- 2.72 s (coarse 5.24 s), 6-core/12-thread Xeon
AIM_CLICK_US, AIM_BATCH_US, AIM_SEG_S, AIM_SEG_MIB = 100.0, 30.0, 2.0, 1536.0  # issue 17's aims
# figures on this 2-core machine when issue 17 was filed (FINDINGS / the issue), printed beside this run's
PREVIOUS = {"click_us": 157.0, "batch_us": 50.0, "segment_s": 2.5}


# ----------------------------------------------------------------------------------------------------------
# model and scan
# ----------------------------------------------------------------------------------------------------------
def resolve_model(arg: str | None) -> Path:
    """The .onnx path to use; exits with a clear message when the (shipped) model is missing."""
    from organscope.engines.sparse.model import DEFAULT_MODEL, model_paths
    from organscope.modelcard import MODELS_DIR
    from organscope.errors import ModelError

    try:
        onnx_path, _card = model_paths(arg)
    except ModelError as e:
        where = f"{MODELS_DIR / DEFAULT_MODEL}.onnx (+ .json)" if arg is None else arg
        sys.exit(f"bench_sparse: model not found: {where}.\n  {e}\n  The benchmark defaults to the shipped "
                 "model; train/ship it first or pass --model PATH.onnx (with its .json card beside it).")
    return onnx_path


def build_scan(source: Path, shape, spacing_mm, cache_dir: Path) -> tuple[Path, float | None]:
    """Resample `source` (order 1) onto a `shape` grid at `spacing_mm`, RAS+ axis-aligned, centred on the source
    scan, padded with -1024 HU; int16, written once as uncompressed .nii in cache_dir. Returns (path, seconds
    spent building, or None if it was cached)."""
    import nibabel as nib
    from scipy import ndimage

    import organscope as osc

    tag = "x".join(map(str, shape)) + "_" + "x".join(f"{s:g}" for s in spacing_mm)
    stem = source.name.split(".")[0]
    out = cache_dir / f"bench_{stem}_{tag}.nii"
    if out.exists():
        return out, None
    t = time.perf_counter()
    canon, _ = osc.load_volume(source).to_canonical()  # axis-aligned RAS+ (flips/permutations only)
    src = np.ascontiguousarray(canon.array, dtype=np.int16)
    a_src = canon.affine
    shape = np.asarray(shape)
    sp = np.asarray(spacing_mm, dtype=float)
    centre = a_src[:3, :3] @ ((np.asarray(src.shape) - 1) / 2.0) + a_src[:3, 3]
    a_tgt = np.eye(4)
    a_tgt[:3, :3] = np.diag(sp)
    a_tgt[:3, 3] = centre - sp * (shape - 1) / 2.0
    m = np.linalg.inv(a_src) @ a_tgt  # target voxel -> source voxel
    lin = m[:3, :3]
    # a diagonal matrix is exactly scipy.ndimage.zoom's resampling (with crop/pad folded into the offset)
    matrix = np.diag(lin) if np.allclose(lin, np.diag(np.diag(lin))) else lin
    arr = ndimage.affine_transform(src, matrix, offset=m[:3, 3], output_shape=tuple(int(s) for s in shape),
                                   order=1, mode="constant", cval=-1024.0, output=np.int16)
    img = nib.Nifti1Image(arr, a_tgt)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(a_tgt, code=1)
    img.set_sform(a_tgt, code=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".nii", dir=cache_dir)
    os.close(fd)
    nib.save(img, tmp)
    os.replace(tmp, out)
    return out, time.perf_counter() - t


COARSE_STEP = (4, 4, 2)  # voxel step of the body mask used only to pick benchmark points


def coarse_body(array: np.ndarray, step=COARSE_STEP) -> np.ndarray:
    """The engine's body mask computed on every step-th voxel (cheap; only used to pick points here)."""
    from organscope.sampling.points import body_mask

    return body_mask(np.ascontiguousarray(array[tuple(slice(s // 2, None, s) for s in step)]))


def random_body_voxels(body_c: np.ndarray, shape, n: int, rng: np.random.Generator, step=COARSE_STEP,
                       snap=None) -> np.ndarray:
    """n random voxels of the full grid inside the body: a random cell of the coarse body mask, a uniformly
    random voxel in it; `snap` (a level's voxel step) moves each to the nearest point of that level's grid."""
    flat = body_c.reshape(-1)
    picks: list[np.ndarray] = []
    got = 0
    while got < n:
        cand = rng.integers(0, flat.size, max(4 * (n - got), 1024))
        cand = cand[flat[cand]]
        picks.append(cand)
        got += len(cand)
    cells = np.stack(np.unravel_index(np.concatenate(picks)[:n], body_c.shape), axis=1)
    vox = cells * np.asarray(step) + rng.integers(0, np.asarray(step), (n, 3))
    if snap is not None:
        sn = np.asarray(snap)
        vox = np.clip(vox // sn, 0, (np.asarray(shape) - 1 - sn // 2) // sn) * sn + sn // 2
    return np.clip(vox, 0, np.asarray(shape) - 1).astype(np.int32)


# ----------------------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------------------
def numpy_gather(vol: np.ndarray, centers: np.ndarray, offsets: np.ndarray, batch: int = 512) -> np.ndarray:
    """The same descriptor as organscope.sampling.gather, with plain numpy fancy indexing (one thread)."""
    n0, n1, n2 = vol.shape
    flat = vol.reshape(-1)
    out = np.empty((len(centers), len(offsets)), dtype=np.float32)
    o = offsets.astype(np.int64)
    for s in range(0, len(centers), batch):
        c = centers[s:s + batch].astype(np.int64)
        i = c[:, None, 0] + o[None, :, 0]
        j = c[:, None, 1] + o[None, :, 1]
        k = c[:, None, 2] + o[None, :, 2]
        valid = (i >= 0) & (i < n0) & (j >= 0) & (j < n1) & (k >= 0) & (k < n2)
        lin = (i * n1 + j) * n2 + k
        lin[~valid] = 0
        v = flat[lin].astype(np.float32)
        v *= 1.0 / 128.0
        np.clip(v, -4.0, 4.0, out=v)
        v[~valid] = 0.0
        out[s:s + batch] = v
    return out


# ----------------------------------------------------------------------------------------------------------
# point timings (in this process)
# ----------------------------------------------------------------------------------------------------------
def set_numba_threads(n: int) -> int:
    import numba

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def point_timings(model: Path, prepared, vox_click, vox_batch, threads: int, repeats: int) -> dict:
    import organscope.api as api
    from organscope.sampling.gather import KIND_U8, Sampler

    set_numba_threads(threads)
    eng = api.engine("sparse", model=str(model), threads=threads)
    arr, offs = prepared.canonical.array, prepared.offsets_vox
    to_world = prepared.canonical.voxel_to_world
    res: dict = {"threads": threads}
    codes = eng.model.input_kind == "codes"
    # the previous gather, measured in this run as the baseline: bounds-checked reads of the int16 volume
    previous = Sampler(arr, offs, KIND_U8) if codes else prepared.sampler

    # -- click: one point per call --
    pts_click = to_world(vox_click)
    one = np.empty((1, len(offs)), dtype=prepared.sampler.dtype)
    clicks = [np.ascontiguousarray(v[None], dtype=np.int32) for v in vox_click]
    t_query = C.repeat(lambda: [eng.query(prepared, p[None]) for p in pts_click], repeats)
    # the engine's own path: the prepared scan's sampler (layout and offsets worked out once), then the network
    # (compiled for one point when the model allows it: engines/sparse/click.py)
    t_gather = C.repeat(lambda: [prepared.sampler(v, one) for v in clicks], repeats)
    t_classify = C.repeat(lambda: [eng.classify_voxels(prepared, v) for v in clicks], repeats)
    # the previous path: the int16 gather and ONNX Runtime's single-threaded session
    small = eng._model_for(1)
    t_prev = C.repeat(lambda: [small.predict(previous(v, one)) for v in clicks], repeats)
    n = len(vox_click)
    res["click"] = {k: C.median(v) / n * 1e6 for k, v in
                    (("query_us", t_query), ("gather_us", t_gather), ("classify_us", t_classify),
                     ("previous_gather_onnx_us", t_prev))}
    c = res["click"]
    c["mlp_us"] = c["classify_us"] - c["gather_us"]
    c["other_us"] = c["query_us"] - c["classify_us"]
    c["compiled"] = eng._click_net() is not None
    c["query_runs_us"] = [t / n * 1e6 for t in t_query]

    # -- batch: n random points in one query --
    pts = to_world(vox_batch)
    batch = eng.settings.batch
    buf = np.empty((min(batch, len(vox_batch)), len(offs)), dtype=np.uint8 if codes else np.float32)

    def split():
        tg = tm = 0.0
        for s in range(0, len(vox_batch), batch):
            part = vox_batch[s:s + batch]
            t = time.perf_counter()
            d = prepared.sampler(part, buf[:len(part)])
            t2 = time.perf_counter()
            eng.model.predict(d)
            tm += time.perf_counter() - t2
            tg += t2 - t
        return tg, tm

    t_query = C.repeat(lambda: eng.query(prepared, pts), repeats)
    split()
    splits = [split() for _ in range(repeats)]
    order = np.lexsort((vox_batch[:, 2], vox_batch[:, 1], vox_batch[:, 0]))
    sorted_vox = np.ascontiguousarray(vox_batch[order])

    def gather_sorted():
        for s in range(0, len(sorted_vox), batch):
            part = sorted_vox[s:s + batch]
            prepared.sampler(part, buf[:len(part)])

    t_sorted = C.repeat(gather_sorted, repeats)

    def previous_sorted():
        for s in range(0, len(sorted_vox), batch):
            part = sorted_vox[s:s + batch]
            previous(part, buf[:len(part)])

    t_prev_sorted = C.repeat(previous_sorted, repeats)
    n = len(vox_batch)
    res["batch"] = {"n_points": n, "batch": batch,
                    "query_us": C.median(t_query) / n * 1e6,
                    "gather_us": C.median([s[0] for s in splits]) / n * 1e6,
                    "mlp_us": C.median([s[1] for s in splits]) / n * 1e6,
                    "gather_raster_sorted_us": C.median(t_sorted) / n * 1e6,
                    "previous_gather_raster_sorted_us": C.median(t_prev_sorted) / n * 1e6,
                    "query_runs_us": [t / n * 1e6 for t in t_query]}
    b = res["batch"]
    b["other_us"] = b["query_us"] - b["gather_us"] - b["mlp_us"]
    return res


# ----------------------------------------------------------------------------------------------------------
# segmentation (each run in a fresh subprocess)
# ----------------------------------------------------------------------------------------------------------
def _phantom():
    """A small CT-like volume (2 mm voxels) to warm the engine up (model load, compiled-kernel cache)."""
    from organscope.volume import Volume

    g = np.indices((48, 48, 40)).astype(float)
    r = ((g[0] - 24) / 18) ** 2 + ((g[1] - 24) / 14) ** 2 + ((g[2] - 20) / 17) ** 2
    a = np.where(r < 1, 40, -1000).astype(np.int16)
    a[(r < 0.15)] = 700
    return Volume(a, np.diag([2.0, 2.0, 2.0, 1.0]))


def child_segment(nii: Path, model: Path, threads: int) -> dict:
    """One timed organscope.api.segment on an already loaded Volume; prints a JSON line."""
    import organscope as osc
    import organscope.api as api
    import organscope.engines.sparse.engine as eng_mod
    from organscope import components
    from organscope.engines.sparse import refine

    rec: dict = {"rss_start_mib": C.current_rss_mib()}
    t = time.perf_counter()
    vol = osc.load_volume(nii)
    rec["load_map_s"] = time.perf_counter() - t
    int(np.asarray(vol.array).max())  # page the (memory-mapped) data in, so it is loaded before timing segment
    rec["load_s"] = time.perf_counter() - t
    rec["rss_after_load_mib"] = C.current_rss_mib()

    set_numba_threads(threads)
    t = time.perf_counter()
    eng = api.engine("sparse", model=str(model), threads=threads)
    eng.segment(_phantom())
    rec["engine_warmup_s"] = time.perf_counter() - t
    rec["rss_after_warmup_mib"] = C.current_rss_mib()

    # instrumentation: exclusive time per (phase, function); a few perf_counter calls per wrapped call
    timer = C.ExclusiveTimer()
    points: dict[str, list[int]] = {}  # phase -> points of each classify_voxels call (one per sweep)
    orig_classify = eng.classify_voxels

    def classify(scan, centers, **kw):
        points.setdefault(timer.phase, []).append(int(np.asarray(centers).reshape(-1, 3).shape[0]))
        return orig_classify(scan, centers, **kw)

    eng.classify_voxels = timer.wrap("classify_other", classify)
    eng.model.predict = timer.wrap("mlp", eng.model.predict)
    saved = {"gather": eng_mod.Sampler.__call__, "codes": eng_mod.CodeSampler.__call__,
             "body_mask": eng_mod.body_mask}
    eng_mod.Sampler.__call__ = timer.wrap("gather", saved["gather"])
    eng_mod.CodeSampler.__call__ = timer.wrap("gather", saved["codes"])
    eng_mod.body_mask = timer.wrap("body_mask", saved["body_mask"], lambda *a, **k: "prepare")
    # disagreement filters: the first sweep's candidates, the re-checks around changed points, the full filter
    # inside majority smoothing (timed as 'majority', exclusive)
    saved_refine = {(refine, n): getattr(refine, n) for n in ("first_candidates", "edges_near", "disagreement",
                                                              "majority_smooth", "expand_into")}
    saved_refine[(components, "largest_components")] = components.largest_components
    for (mod, n), f in saved_refine.items():
        setattr(mod, n, timer.wrap(n, f))

    def progress(msg: str, frac: float):
        timer.phase = f"level_{msg.split()[1].split('/')[0]}" if msg.startswith("level") else "finish"

    timer.phase = "prepare"
    try:
        t = time.perf_counter()
        seg = api.segment(vol, model=str(model), threads=threads, progress=progress)
        rec["segment_s"] = time.perf_counter() - t
    finally:
        eng_mod.Sampler.__call__, eng_mod.body_mask = saved["gather"], saved["body_mask"]
        eng_mod.CodeSampler.__call__ = saved["codes"]
        for (mod, n), f in saved_refine.items():
            setattr(mod, n, f)
    rec["peak_rss_mib"] = C.peak_rss_mib()
    rec["peak_minus_loaded_mib"] = rec["peak_rss_mib"] - rec["rss_after_load_mib"]
    rec["timings_s"] = {k: float(v) for k, v in seg.timings_s.items()}
    rec["points_per_level"] = [sum(points.get(f"level_{i + 1}", [])) for i in range(len(points) and max(
        int(k.split("_")[1]) for k in points if k.startswith("level_")))]
    rec["sweeps_per_level"] = {k: v for k, v in points.items()}
    rec["profile"] = {f"{p}|{n}": v for (p, n), v in timer.totals.items()}
    rec["labels_present"] = [int(x) for x in np.unique(seg.labels.array)]
    prepared = eng.prepare(vol)  # after timing: count the body points of the finest grid (dense baseline)
    fine = refine.level_steps(prepared.canonical.spacing_mm, eng.settings.levels_mm)[-1]
    rec["dense_points"] = int(prepared.body_grid(fine).sum())
    rec["body_fraction"] = float(prepared.body_coarse.mean())
    return rec


def run_segment_child(nii: Path, model: Path, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-segment", str(nii), "--model", str(model),
           "--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit(f"bench_sparse: the segmentation subprocess failed (exit {p.returncode}).")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------------------
def print_points(rows: list[dict], numpy_us: float, aim_click: float, aim_batch: float) -> None:
    print(f"{'case':<34}{'threads':>8}{'total µs/pt':>13}{'gather':>10}{'MLP':>10}{'other':>10}   aim")
    for r in rows:
        c = r["click"]
        print(f"{'click: query(1 point) x' + str(r['n_click']):<34}{r['threads']:>8}{c['query_us']:>13.1f}"
              f"{c['gather_us']:>10.1f}{c['mlp_us']:>10.1f}{c['other_us']:>10.1f}   <= {aim_click:g}")
    for r in rows:
        c = r["click"]
        print(f"{'  previous: int16 gather + ONNX RT':<34}{r['threads']:>8}{'':>13}"
              f"{c['previous_gather_onnx_us']:>20.1f}   (vs {c['classify_us']:.1f} gather + network now: "
              f"{c['previous_gather_onnx_us'] / c['classify_us']:.1f}x)")
    for r in rows:
        b = r["batch"]
        print(f"{'batch: query(' + format(b['n_points'], ',') + ' random points)':<34}{r['threads']:>8}"
              f"{b['query_us']:>13.2f}{b['gather_us']:>10.2f}{b['mlp_us']:>10.2f}{b['other_us']:>10.2f}"
              f"   <= {aim_batch:g}")
    for r in rows:
        b = r["batch"]
        print(f"{'  gather only, raster-sorted pts':<34}{r['threads']:>8}{'':>13}{b['gather_raster_sorted_us']:>10.2f}"
              f"   (previous int16 gather {b['previous_gather_raster_sorted_us']:.2f}: "
              f"{b['previous_gather_raster_sorted_us'] / b['gather_raster_sorted_us']:.1f}x)")
    print(f"{'  gather only, plain numpy':<34}{1:>8}{'':>13}{numpy_us:>10.2f}")
    compiled = all(r["click"]["compiled"] for r in rows)
    print(f"  (click MLP = the {'compiled one-point network (engines/sparse/click.py)' if compiled else 'ONNX Runtime session'}"
          "; 'other' = query's own work: mm->voxel, checks, top-3, Python/dispatch overhead)")


def print_segment(runs: list[dict], steps, spacing) -> dict:
    tot = [r["segment_s"] for r in runs]
    mid = sorted(runs, key=lambda r: r["segment_s"])[len(runs) // 2]
    summary = {
        "segment_s": C.median(tot), "segment_runs_s": tot,
        "load_s": C.median([r["load_s"] for r in runs]),
        "load_map_s": C.median([r["load_map_s"] for r in runs]),
        "engine_warmup_s": C.median([r["engine_warmup_s"] for r in runs]),
        "peak_rss_mib": C.median([r["peak_rss_mib"] for r in runs]),
        "peak_minus_loaded_mib": C.median([r["peak_minus_loaded_mib"] for r in runs]),
        "rss_after_load_mib": C.median([r["rss_after_load_mib"] for r in runs]),
        "points_classified": mid["timings_s"].get("points_classified"),
        "points_per_level": mid["points_per_level"], "timings_s": mid["timings_s"], "profile": mid["profile"],
        "dense_points": mid.get("dense_points"), "body_fraction": mid.get("body_fraction"),
    }
    print(f"segment (organscope.api.segment on the loaded Volume): median {summary['segment_s']:.2f} s "
          f"over {len(runs)} fresh processes (runs {C.spread(tot)} s)   aim <= {AIM_SEG_S:g} s")
    print(f"load .nii (memory-mapped, then paged in): {summary['load_s']:.3f} s "
          f"(header+map {summary['load_map_s']:.3f} s); engine start + warm-up on a small phantom "
          f"(not in the time above): {summary['engine_warmup_s']:.2f} s")
    print(f"peak RSS: {summary['peak_minus_loaded_mib']:.0f} MiB above the loaded volume, "
          f"{summary['peak_rss_mib']:.0f} MiB total (after loading: {summary['rss_after_load_mib']:.0f} MiB)"
          f"   aim <= {AIM_SEG_MIB:g} MiB")
    print("\nwhere the time goes (run with the median total; exclusive seconds, so 'disagree' includes the call "
          "inside majority smoothing; 'batching' = the engine's own loop; 'rest' = level time not in a listed call):")
    prof = mid["profile"]
    tm = mid["timings_s"]
    cols = ("gather", "mlp", "classify_other", ("first_candidates", "edges_near", "disagreement"), "majority_smooth",
            "largest_components", "expand_into")
    heads = ("gather", "MLP", "batching", "disagree", "majority", "components", "expand")
    print(f"{'phase':<44}{'points':>10}{'seconds':>9}" + "".join(f"{h:>11}" for h in heads) + f"{'rest':>8}")
    phase_rows = [("prepare (canonical + body)", "prepare", tm.get("prepare", 0.0), None)]
    for i, st in enumerate(steps):
        mm = "x".join(f"{s * v:g}" for s, v in zip(st, spacing))
        npts = mid["points_per_level"][i] if i < len(mid["points_per_level"]) else 0
        nsw = len(mid.get("sweeps_per_level", {}).get(f"level_{i + 1}", []))
        phase_rows.append((f"level {i + 1}: {'x'.join(map(str, st))} vox={mm} mm, {nsw} sweep{'s' * (nsw != 1)}",
                           f"level_{i + 1}", tm.get(f"level_{i + 1}", 0.0), npts))
    phase_rows.append(("final components (finest grid) + expand", "finish",
                       tm.get("components", 0.0) + tm.get("expand", 0.0), None))
    for label, key, secs, npts in phase_rows:
        vals = [sum(prof.get(f"{key}|{n}", 0.0) for n in ((c,) if isinstance(c, str) else c)) for c in cols]
        extra = prof.get(f"{key}|body_mask", 0.0)
        rest = secs - sum(vals) - extra
        line = f"{label:<44}{'' if npts is None else format(npts, ','):>10}{secs:>9.3f}"
        line += "".join(f"{v:>11.3f}" if v else f"{'':>11}" for v in vals) + f"{rest:>8.3f}"
        if extra:
            line += f"   (body_mask {extra:.3f} s)"
        print(line)
    known = tm.get("prepare", 0) + sum(tm.get(f"level_{i + 1}", 0) for i in range(len(steps))) + tm.get(
        "components", 0) + tm.get("expand", 0)
    print(f"{'map back to input grid, other':<44}{'':>10}{tm.get('total', 0) - known:>9.3f}")
    print(f"{'total (engine timings_s)':<44}{int(tm.get('points_classified', 0)):>10,}{tm.get('total', 0):>9.3f}")
    return summary


def print_header(info: dict, args, model: Path, scan_src: Path, sizes: dict, threads_all: int) -> None:
    print("organscope sparse-engine benchmark" + ("  [--quick: smoke-test sizes, figures not comparable]"
                                                   if args.quick else ""))
    print(f"machine: {info['cpu_model']}; {info['cores_available']} cores available "
          f"({info['logical_cpus']} logical CPUs); {info['platform']}")
    la = info["load_average"]
    busy = ""
    if la and la[0] > 0.5:
        busy = "  <- other work is running: timings are inflated/noisy"
    print(f"load average: {'n/a' if not la else ', '.join(f'{x:.2f}' for x in la)}{busy}")
    print(f"threads: 1 and {threads_all} (numba.set_num_threads + ONNX Runtime intra-op threads); "
          f"env: {info['env'] or 'none of ' + ', '.join(C.ENV_SHOWN)}")
    print(f"versions: python {info['python']}, numpy {info['numpy']}, numba {info['numba']}, "
          f"onnxruntime {info['onnxruntime']}, scipy {info['scipy']}")
    from organscope.engines.sparse.model import DEFAULT_MODEL
    from organscope.modelcard import MODELS_DIR

    is_shipped = model.resolve() == (MODELS_DIR / f"{DEFAULT_MODEL}.onnx").resolve()
    shipped = "the shipped model" if is_shipped else "NOT the shipped model"
    print(f"model: {model} ({shipped})")
    print(f"scan: {scan_src.name} resampled (order 1) to {'x'.join(map(str, sizes['shape']))} at "
          f"{'x'.join(f'{s:g}' for s in sizes['spacing'])} mm; repeats: {sizes['repeats']} (points), "
          f"{sizes['seg_repeats']} (segmentation); medians shown")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="path to an .onnx model with its .json card (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=None,
                    help="the 'all threads' setting (default: all available cores); 1 thread is always measured too")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each point timing (default 5; quick 3)")
    ap.add_argument("--seg-repeats", type=int, default=None,
                    help="segmentation runs, each in a fresh process (default 3; quick 1)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a CI smoke run (1k points, 256x256x150)")
    ap.add_argument("--scan", type=Path, default=DEFAULT_SCAN, help="real scan to resample (default: bundled example)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "organscope-bench",
                    help="folder for the resampled .nii (built once)")
    ap.add_argument("--json", type=Path, help="save all figures to this JSON file")
    ap.add_argument("--seg-budget", type=float, default=90.0,
                    help="stop repeating segmentations once they have taken this many seconds (default 90)")
    ap.add_argument("--skip-dense", action="store_true", help="skip the dense-grid baseline estimate")
    ap.add_argument("--child-segment", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    threads_all = args.threads or C.available_cores()
    if args.child_segment:
        rec = child_segment(args.child_segment, Path(args.model), threads_all)
        print(json.dumps(rec))
        return 0

    model = resolve_model(args.model)
    sizes = dict(QUICK if args.quick else FULL)
    if args.repeats:
        sizes["repeats"] = args.repeats
    if args.seg_repeats:
        sizes["seg_repeats"] = args.seg_repeats
    info = C.machine_info()
    print_header(info, args, model, args.scan, sizes, threads_all)
    out: dict = {"machine": info, "model": str(model), "quick": args.quick, "sizes": sizes,
                 "threads_all": threads_all}
    t_start = time.perf_counter()

    import organscope as osc
    import organscope.api as api
    from organscope.engines.sparse import refine

    nii, built = build_scan(args.scan, sizes["shape"], sizes["spacing"], args.cache)
    print(f"scan file: {nii} ({'built in %.1f s' % built if built is not None else 'cached'}; "
          f"{nii.stat().st_size / 2**20:.0f} MiB uncompressed)")
    vol = osc.load_volume(nii)
    eng = api.engine("sparse", model=str(model), threads=threads_all)
    prepared = eng.prepare(vol)
    shape = prepared.canonical.shape
    body_c = coarse_body(prepared.canonical.array)
    spacing = tuple(float(s) for s in prepared.canonical.spacing_mm)
    steps = refine.level_steps(spacing, eng.settings.levels_mm)
    rng = np.random.default_rng(12345)
    vox_click = random_body_voxels(body_c, shape, sizes["n_click"], rng)
    vox_batch = random_body_voxels(body_c, shape, sizes["n_batch"], rng)
    print(f"body: ~{body_c.mean() * 100:.1f} % of voxels (points are picked with the body mask on every "
          f"{'x'.join(map(str, COARSE_STEP))} voxel); levels (voxel steps): "
          f"{', '.join('x'.join(map(str, s)) for s in steps)}")

    # ---- 1. points ----
    print(C.rule("1. Point classification (random points inside the body, scan already prepared)"))
    rows = []
    thread_set = [1] if threads_all == 1 else [1, threads_all]
    for th in thread_set:
        r = point_timings(model, prepared, vox_click, vox_batch, th, sizes["repeats"])
        r["n_click"] = len(vox_click)
        rows.append(r)
    set_numba_threads(1)
    from organscope.sampling.gather import gather

    arr, offs = prepared.canonical.array, prepared.offsets_vox
    nb_ref = gather(arr, vox_batch[:256], offs)
    np_ref = numpy_gather(arr, vox_batch[:256], offs)
    same = bool(np.array_equal(nb_ref, np_ref))
    t_np = C.repeat(lambda: numpy_gather(arr, vox_batch, offs), sizes["repeats"])
    numpy_us = C.median(t_np) / len(vox_batch) * 1e6
    print_points(rows, numpy_us, AIM_CLICK_US, AIM_BATCH_US)
    out["points"] = rows
    out["numpy_gather_us"] = numpy_us
    out["numpy_gather_identical"] = same

    # ---- 2. segmentation ----
    print(C.rule(f"2. Full segmentation, {'x'.join(map(str, sizes['shape']))} at "
                 f"{'x'.join(f'{s:g}' for s in sizes['spacing'])} mm, {threads_all} threads"))
    runs: list[dict] = []
    t_seg = time.perf_counter()
    for i in range(sizes["seg_repeats"]):
        runs.append(run_segment_child(nii, model, threads_all))
        if i + 1 < sizes["seg_repeats"] and time.perf_counter() - t_seg > args.seg_budget:
            print(f"NOTE: stopped after {i + 1} of {sizes['seg_repeats']} segmentation runs: they took "
                  f"{time.perf_counter() - t_seg:.0f} s, over the --seg-budget of {args.seg_budget:g} s "
                  "(figures below are from fewer runs than asked)")
            break
    seg = print_segment(runs, steps, spacing)
    seg["runs_requested"] = sizes["seg_repeats"]
    out["segmentation"] = seg

    # ---- 3. baselines ----
    print(C.rule("3. Baselines (measured in this run) and reference figures"))
    r1 = rows[0]["batch"]["gather_us"]
    rall = rows[-1]["batch"]["gather_us"]
    print(f"(a) gather, {len(vox_batch):,} random points: numpy fancy indexing {numpy_us:.1f} µs/pt (1 thread, "
          f"{'identical values' if same else 'VALUES DIFFER'}) vs numba {r1:.1f} µs/pt (1 thread) -> "
          f"{numpy_us / r1:.1f}x faster; {rall:.1f} µs/pt ({threads_all} threads) -> {numpy_us / rall:.1f}x")
    out["baselines"] = {"gather_speedup_1thread": numpy_us / r1, "gather_speedup_all": numpy_us / rall}
    if not args.skip_dense:
        set_numba_threads(threads_all)
        fine = steps[-1]
        n_dense = int(seg["dense_points"])  # body points of the finest grid, counted by the child on its mask
        n_sample = min(sizes["n_dense"], n_dense)
        vox = random_body_voxels(body_c, shape, n_sample, rng, snap=fine)
        vox = np.ascontiguousarray(vox[np.lexsort((vox[:, 2], vox[:, 1], vox[:, 0]))])
        t_d = C.repeat(lambda: eng.classify_voxels(prepared, vox), max(3, sizes["seg_repeats"]), warmup=0)
        per_pt = C.median(t_d) / n_sample
        est = per_pt * n_dense
        hier = seg["segment_s"]
        print(f"(b) dense: classify every body point of the finest grid (step {'x'.join(map(str, fine))} vox) = "
              f"{n_dense:,} points. ESTIMATED, not run in full: a fixed random sample of {n_sample:,} of them "
              f"(raster order) took {per_pt * 1e6:.1f} µs/pt, x {n_dense:,} = {est:.1f} s (classification only; "
              f"no smoothing/components) vs hierarchical {hier:.2f} s ({seg['points_classified']:,.0f} points) "
              f"-> {est / hier:.1f}x faster, {n_dense / max(seg['points_classified'] or 1, 1):.1f}x fewer points")
        out["baselines"].update({"dense_points": n_dense, "dense_sample": n_sample, "dense_us_per_point": per_pt * 1e6,
                                 "dense_estimated_s": est, "hierarchical_speedup": est / hier})
    print(f"(c) from the paper (NOT measured here; BTCV, 6-core/12-thread Xeon): {PAPER_MS_PER_POINT} ms per "
          f"point query; ~10 s per scan for the fine segmentation ({PAPER_S_PER_SCAN} +- 2.72 s; coarse 5.24 s)")
    c1 = min(r["click"]["query_us"] for r in rows)
    print(f"    this run: click {c1:.0f} µs/pt, best thread setting ({PAPER_MS_PER_POINT * 1000 / c1:.1f}x the paper's speed), "
          f"segmentation {seg['segment_s']:.2f} s ({PAPER_S_PER_SCAN / seg['segment_s']:.1f}x) -- different "
          f"data, scan size and CPU")
    b1 = min(r["batch"]["query_us"] for r in rows)
    print(f"(d) when issue 17 was filed (same machine, NOT measured in this run): click {PREVIOUS['click_us']:g} µs, "
          f"batch {PREVIOUS['batch_us']:g} µs/pt, segmentation {PREVIOUS['segment_s']:g} s; this run: click {c1:.0f} "
          f"µs, batch {b1:.1f} µs/pt, segmentation {seg['segment_s']:.2f} s")
    out["paper"] = {"ms_per_point": PAPER_MS_PER_POINT, "s_per_scan": PAPER_S_PER_SCAN}
    out["previous"] = PREVIOUS
    out["wall_s"] = time.perf_counter() - t_start
    print(f"\nbenchmark wall time {out['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
        print(f"figures saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
