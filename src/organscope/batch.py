"""Batch segmentation: many scans -> one output folder, on a local process pool or a Dask cluster.

    organscope segment -i DIR_OR_GLOB -o OUT_DIR [--statistics] [--preview] [--dicom-seg] [--masks]
                       [--jobs N | --scheduler ADDRESS]

Scans are the .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd files of a folder (or of a glob's matches) and its
sub-folders that hold a DICOM series (one scan each). Scan `NAME` writes, in OUT_DIR:

    NAME.nii.gz + NAME.json     label map and organ names (always)
    NAME.statistics.json        --statistics        NAME.preview.png     --preview
    NAME.seg.dcm                --dicom-seg (DICOM series scans only)   NAME_masks/    --masks
    NAME.rtstruct.dcm           --rtstruct  (DICOM series scans only)

Every output is written atomically, so one that exists is complete: a re-run skips the scans whose
requested outputs all exist and writes only the missing ones of the others. A scan that fails is
reported in one line (file and reason) and the others go on; the exit status is then 1. A scan the anatomy check
warns about (organs left out, or not head-and-neck CT) gets the one-scan CLI's warning line, after its name, and
the summary counts them.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InputError, OrganscopeError
from .outputs import OutputPaths
from .pipeline import SegmentOptions

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_GLOB_CHARS = set("*?[")
#: The optional outputs: option name -> suffix added to the scan name.
EXTRA_OUTPUTS = {"statistics": ".statistics.json", "preview": ".preview.png", "dicom_seg": ".seg.dcm",
                 "masks": "_masks", "rtstruct": ".rtstruct.dcm"}
#: Outputs that refer to the source DICOM series, so only DICOM scans get them.
DICOM_OUTPUTS = ("dicom_seg", "rtstruct")


# --- finding scans -------------------------------------------------------------------------------

def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _holds_dicom(folder: Path) -> bool:
    """True if `folder` directly holds a DICOM file (so the folder is one series, one scan)."""
    from .io.dicom import is_dicom_file

    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and _volume_suffix(f) is None and is_dicom_file(f):
            return True
    return False


def _candidates(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and _volume_suffix(p):
            out.append(p)
        elif p.is_dir() and _holds_dicom(p):
            out.append(p)
    return out


def is_batch_input(spec: str | os.PathLike) -> bool:
    """True if `-i` names several scans: a glob pattern, or a folder of scans (not itself a DICOM series)."""
    text = str(spec)
    p = Path(text)
    if not p.exists():
        return bool(_GLOB_CHARS & set(text))
    if not p.is_dir() or _holds_dicom(p):
        return False
    return bool(_candidates(p))


def find_scans(spec: str | os.PathLike) -> list[Path]:
    """The scans named by a folder or a glob pattern, sorted; a DICOM file stands for its folder's series."""
    text = str(spec)
    p = Path(text)
    if p.is_dir():
        scans = _candidates(p)
    else:
        scans = []
        for m in sorted(glob.glob(text)):
            m = Path(m)
            if m.name.startswith("."):
                continue
            if m.is_file() and _volume_suffix(m):
                scans.append(m)
            elif m.is_dir() and _holds_dicom(m):
                scans.append(m)
            elif m.is_file():
                from .io.dicom import is_dicom_file

                if is_dicom_file(m) and m.parent not in scans:
                    scans.append(m.parent)
    if not scans:
        raise InputError(f"No scans found in {text}: give a folder or a glob pattern of .nii/.nii.gz/.nrrd/.mha "
                         "files or DICOM series folders.")
    return scans


def scan_name(scan: Path) -> str:
    suffix = _volume_suffix(scan) if scan.is_file() else None
    return scan.name[: -len(suffix)] if suffix else scan.name


def _is_dicom_scan(scan: Path) -> bool:
    return scan.is_dir() or _volume_suffix(scan) is None


# --- planning ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanJob:
    """One scan, the outputs still to write for it and the segmentation options (picklable: it travels to pool or
    cluster workers)."""

    scan: str
    targets: OutputPaths
    options: SegmentOptions = SegmentOptions()


@dataclass(frozen=True)
class ScanResult:
    scan: str
    ok: bool
    message: str  # one line: what was found, or why it failed
    seconds: float
    warning: str | None = None  # the anatomy check's warning line (RunResult.warning_line), after the scan's name


def output_paths(out_dir: Path, name: str, extras: set[str]) -> OutputPaths:
    """Where scan `name`'s outputs go in `out_dir`."""
    return OutputPaths(labels=out_dir / f"{name}.nii.gz",
                       **{k: out_dir / f"{name}{s}" for k, s in EXTRA_OUTPUTS.items() if k in extras})


def _complete(key: str, path: Path) -> bool:
    """True if an existing output is readable and whole: a label map (with its .json) that loads, a JSON that
    parses, a PNG/DICOM with its end; anything else (truncated by a crash of an older version) is redone."""
    from .io import sidecar_path

    if not path.exists():
        return False
    try:
        if key == "labels":
            from .io import load_labels

            if not sidecar_path(path).is_file():
                return False
            load_labels(path)
        elif path.suffix == ".json":
            import json

            json.loads(path.read_text())
        elif path.suffix == ".png":
            return path.read_bytes()[-8:] == b"IEND\xaeB`\x82"
        elif path.suffix == ".dcm":
            import pydicom

            pydicom.dcmread(path)
        return path.is_dir() or path.stat().st_size > 0
    except Exception:  # any failure to read it back means: not done
        return False


def _missing(targets: OutputPaths) -> OutputPaths:
    """`targets` without the outputs that already exist and read back whole (the label map only with its .json)."""
    return OutputPaths(**{key: path for key, path in targets.wanted().items() if not _complete(key, path)})


def plan(scans: list[Path], out_dir: Path, extras: set[str], options: SegmentOptions = SegmentOptions()
         ) -> tuple[list[ScanJob], list[Path], list[Path]]:
    """(jobs to run, scans already done, scans given no DICOM-SEG because they are not DICOM series)."""
    names: dict[str, Path] = {}
    for scan in scans:
        name = scan_name(scan)
        if name in names:
            raise InputError(f"{names[name]} and {scan} would write the same outputs ({name}.nii.gz); "
                             "rename one of them.")
        names[name] = scan
    jobs, done, no_seg = [], [], []
    for name, scan in names.items():
        wanted = set(extras)
        if wanted & set(DICOM_OUTPUTS) and not _is_dicom_scan(scan):
            wanted -= set(DICOM_OUTPUTS)
            no_seg.append(scan)
        todo = _missing(output_paths(out_dir, name, wanted))
        if not todo.wanted():
            done.append(scan)
            continue
        jobs.append(ScanJob(str(scan), todo, options))
    return jobs, done, no_seg


# --- one scan (runs in a worker) -----------------------------------------------------------------

def run_scan(job: ScanJob) -> ScanResult:
    """Segment one scan and write its missing outputs (pipeline.run, as the one-scan CLI does); never raises: a
    failure comes back as a result."""
    t0 = time.perf_counter()
    try:
        from .pipeline import run

        res = run(job.scan, job.targets, job.options)
        return ScanResult(job.scan, True, res.found(), time.perf_counter() - t0,
                          res.warning_line(scan_name(Path(job.scan))))
    except OrganscopeError as e:
        return ScanResult(job.scan, False, _one_line(str(e)), time.perf_counter() - t0)
    except Exception as e:  # one scan's unexpected failure is reported with its reason; the batch goes on
        return ScanResult(job.scan, False, _one_line(f"{type(e).__name__}: {e}"), time.perf_counter() - t0)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


# --- executors -----------------------------------------------------------------------------------

def _run_local(jobs: list[ScanJob], n_workers: int, on_result) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the parent may already run ONNX Runtime / numba threads
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    try:
        futures = {pool.submit(run_scan, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                on_result(fut.result())
            except BrokenProcessPool:
                on_result(ScanResult(futures[fut].scan, False, "the worker process died (out of memory?)", 0.0))
    except BaseException:  # Ctrl-C or SIGTERM in the parent: stop the workers (each removes its staged files)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(30)
        raise
    pool.shutdown(wait=True)


def _check_scheduler(address: str) -> None:
    """InputError unless a Dask scheduler answers at `address` (the cluster extra must be installed)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise OrganscopeError(f"--scheduler needs the cluster extra ({exc}); install it with "
                              "pip install 'organscope[cluster]'.") from None
    try:
        Client(address, timeout="20s").close()
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"Cannot reach the Dask scheduler at {address} ({type(e).__name__}); check the "
                         "address (e.g. tcp://host:8786) and that the scheduler is running.") from None


def _worker_init() -> None:
    """In each local worker: SIGTERM -> an exception, so that a run stopped half-way removes its staged files."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers


def _run_dask(jobs: list[ScanJob], address: str, on_result) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise OrganscopeError(f"--scheduler needs the cluster extra ({exc}); install it with "
                              "pip install 'organscope[cluster]'.") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"Cannot reach the Dask scheduler at {address} ({type(e).__name__}); check the "
                         "address (e.g. tcp://host:8786) and that the scheduler is running.") from None
    try:
        futures = client.map(run_scan, jobs, pure=False)
        scan_of = {f.key: job.scan for f, job in zip(futures, jobs)}
        for fut in as_completed(futures):
            try:
                on_result(fut.result())
            except Exception as e:  # a lost worker or a task the cluster killed: report it, go on
                on_result(ScanResult(scan_of[fut.key], False, _one_line(f"on the cluster: {type(e).__name__}: "
                                                                        f"{e}"), 0.0))
    finally:
        client.close()


# --- the command ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchReport:
    ok: list[ScanResult]
    failed: list[ScanResult]
    skipped: list[Path]
    no_dicom_seg: list[Path]
    keep_unverified: bool = False  # the organs the anatomy check refused were kept (marked), not left out

    def warned(self) -> list[ScanResult]:
        """The scans segmented in this run that the anatomy check warned about."""
        return [r for r in self.ok if r.warning]


def run_batch(spec: str | os.PathLike, out_dir: str | os.PathLike, extras: set[str],
              options: SegmentOptions = SegmentOptions(), *, jobs: int | None = None, scheduler: str | None = None,
              progress: bool = False, log=None) -> BatchReport:
    """Segment every scan named by `spec` (folder or glob) into `out_dir` with `options`, writing the optional
    outputs named in `extras` (keys of EXTRA_OUTPUTS) besides the label maps; failures are collected, not raised.
    Without options.threads each of the local workers gets cores / workers threads."""
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"With several scans, -o must be a folder, but {out} is a file.")
    if not out.exists() and _volume_suffix(out):
        raise InputError(f"With several scans, -o must be a folder, not a file name like {out}.")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}.")
    scans = find_scans(spec)
    for scan in scans:
        if out.resolve() in (scan.resolve(), scan.parent.resolve()):
            raise InputError(f"-o {out} is the folder of the input scans; write the outputs to another folder.")
    todo, done, no_seg = plan(scans, out, set(extras), options)
    if todo and scheduler:
        _check_scheduler(scheduler)  # before the output folder is made: an unreachable cluster leaves nothing
    if not out.exists():
        if not out.parent.is_dir():
            raise InputError(f"Cannot create the output folder {out}: {out.parent} does not exist.")
        out.mkdir()
    n_workers = jobs or max(1, min(len(todo), (os.cpu_count() or 1) // 2))
    if scheduler is None and options.threads is None:
        per_worker = replace(options, threads=max(1, (os.cpu_count() or 1) // n_workers))
        todo = [replace(j, options=per_worker) for j in todo]
    ok: list[ScanResult] = []
    failed: list[ScanResult] = []
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="scan", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        def say(line: str) -> None:
            if progress:
                bar.write(line, file=sys.stderr)
            else:
                log(line)

        def on_result(res: ScanResult) -> None:
            (ok if res.ok else failed).append(res)
            if not res.ok:
                say(f"organscope: failed: {res.scan}: {res.message}")
            elif res.warning:
                say(res.warning)
            bar.update(1)

        if todo:
            if scheduler:
                _run_dask(todo, scheduler, on_result)
            else:
                _run_local(todo, n_workers, on_result)
    return BatchReport(ok, failed, done, no_seg, options.keep_unverified)


def summary(report: BatchReport, out_dir) -> str:
    parts = [f"{len(report.ok)} scan(s) segmented", f"{len(report.skipped)} already done (skipped)",
             f"{len(report.failed)} failed"]
    if report.warned():
        what = "organs kept unverified" if report.keep_unverified else "organs left out"
        parts.append(f"{len(report.warned())} scan(s) with {what} by the anatomy check")
    text = f"{out_dir}: " + ", ".join(parts) + "."
    if report.no_dicom_seg:
        text += f" No DICOM-SEG for {len(report.no_dicom_seg)} scan(s) that are not DICOM series."
    return text


def check_batch_extras(asked: dict[str, str]) -> set[str]:
    """The optional outputs of a batch ({output: value given, '' for a bare flag}): each must be a bare flag,
    since every scan's goes to OUT_DIR/<scan><suffix>."""
    for k, v in asked.items():
        if v:
            flag = "--" + k.replace("_", "-")
            raise InputError(f"With several scans, give {flag} without a name: each scan's goes to "
                             f"OUT_DIR/<scan>{EXTRA_OUTPUTS[k]}.")
    return set(asked)


def single_targets(output: str | os.PathLike, asked: dict[str, str]) -> OutputPaths:
    """Output paths of a one-scan run: a bare flag's file is named after the label map (x.nii.gz -> x.*)."""
    out = Path(output)
    suffix = _volume_suffix(out)
    stem = out.name[: -len(suffix)] if suffix else out.stem
    paths = {k: Path(v) if v else out.with_name(stem + EXTRA_OUTPUTS[k]) for k, v in asked.items()}
    from .io.atomic import check_writable

    check_writable(out, *paths.values())
    return OutputPaths(labels=out, **paths)


def cmd_batch(spec: str | os.PathLike, output: str | os.PathLike, options: SegmentOptions, *,
              asked: dict[str, str], jobs: int | None = None, scheduler: str | None = None,
              progress: bool = False) -> int:
    """`organscope segment` with several scans (called by the CLI): run the batch, print its summary; the exit
    status is 1 if a scan failed."""
    extras = check_batch_extras(asked)
    report = run_batch(spec, output, extras, options, jobs=jobs, scheduler=scheduler, progress=progress)
    print(summary(report, output), file=sys.stderr)
    return 1 if report.failed else 0
