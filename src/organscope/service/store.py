"""The service's state, without any web framework: open scans (a small LRU), their prepared query state and
their segmentation jobs.

A scan is loaded once, prepared once by the query engine (an engine with the point-query capability,
`engines.base.supports_query`: the sparse one's `prepare` makes a canonical int16 copy and a descriptor sampler),
and every query request reuses that prepared scan, so a request costs only the gather and the MLP of its points.
Segmentations run one at a time on a background thread through `pipeline.segment_volume`, with the engine each
request names (the store's default otherwise; engines loaded once per process), and report (stage, fraction)
through the engine's progress callback.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..concurrency import engine_lock
from ..errors import InputError, OrganscopeError
from ..volume import Volume

#: Formats that arrive as one file (a DICOM series or a .mhd + .raw pair cannot be uploaded as one file).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class NotFound(OrganscopeError):
    """A scan or job id that the service does not hold (never opened, or closed to make room)."""


class Forbidden(OrganscopeError):
    """A path outside the directory the operator allowed, or path opening switched off."""


class NotReady(OrganscopeError):
    """A job's result was asked for before the job finished."""


class Busy(OrganscopeError):
    """The segmentation queue is full (429, with Retry-After)."""


class JobCancelled(Exception):
    """Raised from a job's progress callback once its scan was closed: stops the engine at its next report."""


#: Longest path a client may send (characters), and the default caps of a store.
MAX_PATH_CHARS = 4096
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
DEFAULT_MAX_JOBS = 4


@dataclass
class Job:
    """One segmentation of one scan: its state and, once done, the label map."""

    id: str
    scan_id: str
    engine: str = ""
    organs: tuple[str, ...] | None = None   # the organ subset asked for (None: all the engine segments)
    state: str = "queued"          # queued | running | done | failed | cancelled
    stage: str = "queued"
    fraction: float = 0.0
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    segmentation: object | None = field(default=None, repr=False)   # engines.base.Segmentation when done
    present: tuple[int, ...] = ()   # label values in the label map (0 = background included if present)
    _labels_nifti: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, stage: str, fraction: float) -> None:
        if self._cancel.is_set():
            raise JobCancelled
        self.stage, self.fraction = str(stage), float(min(max(fraction, 0.0), 1.0))

    def cancel(self) -> None:
        """A queued job will not run; a running one stops at its engine's next progress report."""
        self._cancel.set()
        if self.state == "queued":
            self.state, self.stage = "cancelled", "cancelled"

    def labels_nifti(self) -> bytes:
        """The label map as .nii.gz bytes (written by organscope's own label writer, names in the header)."""
        if self.state != "done":
            raise NotReady(f"Segmentation job {self.id} is {self.state}; fetch its labels once its state is done.")
        with self._lock:
            if self._labels_nifti is None:
                from ..api import save_segmentation

                self._labels_nifti = _write_to_bytes(lambda p: save_segmentation(self.segmentation, p))
            return self._labels_nifti


@dataclass
class ScanEntry:
    """An open scan: the volume as loaded, its prepared query state, and its jobs."""

    id: str
    name: str
    volume: Volume
    prepared: object                       # the query engine's prepared scan (engines.sparse.PreparedScan)
    opened: float = field(default_factory=time.time)
    jobs: dict[str, Job] = field(default_factory=dict)
    _nifti: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def volume_nifti(self) -> bytes:
        """The scan itself as .nii.gz bytes on its own grid and affine (for the viewer)."""
        with self._lock:
            if self._nifti is None:
                from ..io import save_volume

                self._nifti = _write_to_bytes(lambda p: save_volume(self.volume, p))
            return self._nifti

    def info(self) -> dict:
        v = self.volume
        return {"id": self.id, "name": self.name, "shape": list(v.shape),
                "spacing_mm": [round(float(s), 6) for s in v.spacing_mm],
                "affine": [[float(x) for x in row] for row in v.affine], "axcodes": "".join(v.axcodes),
                "dtype": str(v.array.dtype), "jobs": list(self.jobs)}


def _write_to_bytes(write) -> bytes:
    with tempfile.TemporaryDirectory(prefix="organscope-serve-") as d:
        path = Path(d) / "out.nii.gz"
        write(path)
        return path.read_bytes()


class ScanStore:
    """Open scans by id, least recently used first out when more than `max_scans` are open."""

    def __init__(self, *, engine: str | None = None, max_scans: int = 4,
                 allowed_dir: str | os.PathLike | None = None, max_voxels: int = DEFAULT_MAX_VOXELS,
                 max_jobs: int = DEFAULT_MAX_JOBS):
        from .. import api
        from ..engines.base import supports_query
        from ..engines.registry import DEFAULT_ENGINE

        self.engine_name = check_engine(engine or DEFAULT_ENGINE)  # the default segmentation engine
        self.max_scans = max(1, int(max_scans))
        self.max_voxels = int(max_voxels)
        self.max_jobs = max(1, int(max_jobs))   # queued + running segmentations; more are refused (429)
        self._active_jobs = 0
        self.allowed_dir = Path(allowed_dir).resolve() if allowed_dir is not None else None
        if self.allowed_dir is not None and not self.allowed_dir.is_dir():
            raise InputError(f"The allowed directory {allowed_dir} does not exist or is not a folder.")
        # queries: one ONNX Runtime thread each, so that concurrent requests run side by side on the cores
        # instead of queueing behind one request's thread pool; segmentations: all cores, one at a time
        self.query_engine_name = query_engine_for(self.engine_name)
        self.query_engine = api.engine(self.query_engine_name, threads=1)
        if not supports_query(self.query_engine):
            raise InputError(f"The {self.query_engine_name} engine does not answer point queries.")
        self.classes: tuple[str, ...] = tuple(self.query_engine.classes)
        self._scans: OrderedDict[str, ScanEntry] = OrderedDict()
        self._jobs: dict[str, str] = {}  # job id -> scan id
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="organscope-segment")
        #: point queries, one thread per core, first come first served (see app.query)
        self.query_pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                             thread_name_prefix="organscope-query")
        self._query_lock = engine_lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """One query on a small synthetic scan, so that numba compiles (or loads from its cache) the query
        kernels before the server listens, not during the first client's click (seconds on a fresh install)."""
        from ..volume import Volume

        g = np.indices((24, 24, 20)).astype(float)
        inside = ((g[0] - 12) / 9) ** 2 + ((g[1] - 12) / 7) ** 2 + ((g[2] - 10) / 8) ** 2 < 1
        scan = Volume(np.where(inside, 40, -1000).astype(np.int16), np.diag([4.0, 4.0, 2.5, 1.0]))
        prepared = self.query_engine.prepare(scan)
        with self._query_lock, _numba_threads(1):
            self.query_engine.query(prepared, [[48.0, 48.0, 25.0]])             # one click
            self.query_engine.query(prepared, np.full((100, 3), [48.0, 48.0, 25.0]))  # a batch

    # ---- scans ---------------------------------------------------------------------------------------
    def resolve_allowed(self, path: str) -> Path:
        """`path` (absolute, or relative to the allowed directory) resolved, if it lies inside the allowed
        directory; Forbidden otherwise (InputError for a path no file system could hold)."""
        if self.allowed_dir is None:
            raise Forbidden("Opening scans by path is switched off on this server; upload the file instead, "
                            "or restart it with --allow-dir DIR.")
        if "\x00" in path:
            raise InputError("The path contains a NUL byte, which no file name can hold.")
        if len(path) > MAX_PATH_CHARS:
            raise InputError(f"The path is {len(path):,} characters long; this server takes paths of at most "
                             f"{MAX_PATH_CHARS:,}.")
        p = Path(path)
        try:
            resolved = (p if p.is_absolute() else self.allowed_dir / p).resolve()
        except (OSError, RuntimeError, ValueError):
            raise InputError("The path cannot be resolved (a name too long, or a symlink loop).") from None
        if not resolved.is_relative_to(self.allowed_dir):
            raise Forbidden("The path is outside the directory this server may read; give a path inside it "
                            "(absolute, or relative to it).")
        return resolved

    def shown(self, path: Path) -> str:
        """How a path inside the allowed directory appears in messages: relative to it (never the server's
        absolute paths)."""
        try:
            return str(path.relative_to(self.allowed_dir)) if self.allowed_dir is not None else path.name
        except ValueError:
            return path.name

    def open_path(self, path: str | os.PathLike, *, check_allowed: bool = True) -> ScanEntry:
        from ..io import load_volume
        from .guard import Refused, check_path

        if not check_allowed:  # the operator's own scans, given on the command line
            return self.add(load_volume(Path(path)), name=Path(path).name)
        resolved = self.resolve_allowed(str(path))
        shown = self.shown(resolved)
        scrub = {str(resolved): shown, str(resolved.parent) + os.sep: "", str(self.allowed_dir) + os.sep: "",
                 str(self.allowed_dir): "the allowed directory"}
        try:
            if not resolved.exists():
                raise InputError(f"{shown} does not exist in the directory this server may read.")
            check_path(resolved, self.allowed_dir, shown=shown, max_voxels=self.max_voxels)
            # the readers check again what they open: data files must lie inside the allowed directory
            return self.add(load_volume(resolved, allowed_dir=self.allowed_dir, limits=self.limits()),
                            name=resolved.name)
        except Refused as exc:
            raise Forbidden(str(_scrubbed(exc, scrub))) from None
        except OrganscopeError as exc:
            raise _scrubbed(exc, scrub) from None
        except OSError as exc:
            raise InputError(f"{shown} could not be read ({exc.strerror or type(exc).__name__}).") from None

    def open_upload(self, data_path: Path, filename: str) -> ScanEntry:
        """An uploaded file (in a temporary folder): refused before any reader touches it if its header names
        another file or declares more than the caps; messages name it by the client's file name."""
        from ..io import load_volume
        from .guard import check_upload

        scrub = {str(data_path): filename, str(data_path.parent) + os.sep: "", str(data_path.parent): "the upload"}
        try:
            check_upload(data_path, name=filename, max_voxels=self.max_voxels)
            return self.add(load_volume(data_path, allow_external=False, limits=self.limits()),  # the reader too
                            name=filename)
        except OrganscopeError as exc:
            raise _scrubbed(exc, scrub) from None
        except OSError as exc:
            raise InputError(f"{filename} could not be read ({exc.strerror or type(exc).__name__}).") from None

    def limits(self):
        """This server's caps as the readers take them, so that they refuse a scan before allocating it (a DICOM
        folder too, whose size the guard does not estimate from headers)."""
        from ..io import Limits
        from .guard import BYTES_PER_VOXEL_CAP

        return Limits(self.max_voxels, self.max_voxels * BYTES_PER_VOXEL_CAP)

    def add(self, volume: Volume, *, name: str) -> ScanEntry:
        if volume.array.size > self.max_voxels:
            from .guard import TooLarge

            raise TooLarge(f"{name} has {volume.array.size:,} voxels, more than this server's limit of "
                           f"{self.max_voxels:,}; crop or resample the scan, or restart the server with a larger "
                           "--max-voxels.")
        prepared = self.query_engine.prepare(volume)
        from ..qc import query_region

        query_region(self.query_engine, volume)  # the region check every answer carries: worked out (and kept) now
        entry = ScanEntry(uuid.uuid4().hex[:12], name, volume, prepared)
        with self._lock:
            self._scans[entry.id] = entry
            while len(self._scans) > self.max_scans:
                _, old = self._scans.popitem(last=False)
                for job_id, job in old.jobs.items():
                    job.cancel()
                    self._jobs.pop(job_id, None)
        return entry

    def get(self, scan_id: str) -> ScanEntry:
        with self._lock:
            entry = self._scans.get(scan_id)
            if entry is None:
                raise NotFound(f"No open scan has id {_shown_id(scan_id)}; open it again (at most {self.max_scans} "
                               "scans stay open, least recently used first out).")
            self._scans.move_to_end(scan_id)
            return entry

    def close(self, scan_id: str) -> None:
        with self._lock:
            entry = self._scans.pop(scan_id, None)
            if entry is None:
                raise NotFound(f"No open scan has id {_shown_id(scan_id)}.")
            for job_id, job in entry.jobs.items():  # queued ones never run, a running one stops at its next report
                job.cancel()
                self._jobs.pop(job_id, None)

    def list(self) -> list[ScanEntry]:
        with self._lock:
            return list(self._scans.values())

    # ---- queries -------------------------------------------------------------------------------------
    def query(self, scan_id: str, points: np.ndarray, *, voxel: bool):
        entry = self.get(scan_id)
        with self._query_lock, _numba_threads(1):
            return entry, self.query_engine.query(entry.prepared, points, voxel=voxel)

    # ---- segmentation jobs -------------------------------------------------------------------------------
    def start_segmentation(self, scan_id: str, *, engine: str | None = None, organs=None) -> Job:
        """Queue a segmentation of an open scan with `engine` (the store's default when None) and an organ subset
        (names or aliases; None = all). An unknown engine or organ is refused here, before a job exists."""
        from ..engines.base import select_organs
        from ..pipeline import SegmentOptions, load_engine

        entry = self.get(scan_id)
        options = SegmentOptions(engine=check_engine(engine or self.engine_name),
                                 organs=None if organs is None else tuple(organs))
        if options.organs is not None:
            if not options.organs:
                raise InputError("The organ list is empty; leave it out to segment every organ.")
            eng = load_engine(options)  # loaded once per process; the job reuses it
            select_organs(eng.classes[1:], options.organs, eng.name)
        job = Job(uuid.uuid4().hex[:12], scan_id, options.engine, options.organs)
        with self._lock:
            if self._active_jobs >= self.max_jobs:
                raise Busy(f"{self._active_jobs} segmentations are queued or running, this server's limit; try "
                           "again when one has finished.")
            self._active_jobs += 1
            entry.jobs[job.id] = job
            self._jobs[job.id] = scan_id
        try:
            self._executor.submit(self._run, job, entry, options)
        except RuntimeError:  # the executor was shut down
            with self._lock:
                self._active_jobs -= 1
            raise Busy("The server is shutting down; it takes no new segmentations.") from None
        return job

    def _run(self, job: Job, entry: ScanEntry, options) -> None:
        try:
            self._run_job(job, entry, options)
        finally:
            with self._lock:
                self._active_jobs -= 1

    def _run_job(self, job: Job, entry: ScanEntry, options) -> None:
        from ..pipeline import segment_volume

        if job._cancel.is_set():  # its scan was closed while it waited: it never runs
            job.state, job.stage, job.finished = "cancelled", "cancelled", time.time()
            return
        job.state, job.stage = "running", "starting"
        try:
            with self._query_lock:
                job.progress("starting", 0.0)  # a job cancelled while waiting for the lock stops here
                job.segmentation = segment_volume(entry.volume, options, progress=job.progress)
            job.progress("counting organs", 1.0)
            counts = np.bincount(job.segmentation.labels.array.ravel(order="K"))
            job.present = tuple(int(v) for v in np.flatnonzero(counts))
            job.progress("done", 1.0)
            job.state = "done"
        except JobCancelled:
            job.state, job.stage, job.segmentation = "cancelled", "cancelled", None
        except OrganscopeError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # an unexpected failure is reported on the job, not lost in a thread
            job.state, job.error = "failed", f"Segmentation failed unexpectedly ({type(exc).__name__}: {exc})."
        finally:
            job.finished = time.time()

    def job(self, job_id: str) -> Job:
        with self._lock:
            scan_id = self._jobs.get(job_id)
            entry = self._scans.get(scan_id) if scan_id else None
        if entry is None or job_id not in entry.jobs:
            raise NotFound(f"No segmentation job has id {_shown_id(job_id)} (or its scan was closed).")
        return entry.jobs[job_id]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.query_pool.shutdown(wait=False, cancel_futures=True)


def _shown_id(text: str) -> str:
    """An id as quoted in a message: itself if it looks like one of ours, otherwise not echoed."""
    return repr(text) if len(text) <= 32 and text.isascii() and text.isalnum() else "like that"


def _scrubbed(exc: OrganscopeError, replacements: dict[str, str]) -> OrganscopeError:
    """`exc` with the server's paths in its message replaced (longest first): a client sees the file name it
    sent, or a path relative to the allowed directory."""
    text = str(exc)
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    try:
        return type(exc)(text)
    except TypeError:
        return InputError(text)


def check_engine(name: str) -> str:
    """`name` if it is an engine of the registry; otherwise one sentence listing the engines (InputError: 400)."""
    from ..engines.registry import ENGINE_INFO

    if name not in ENGINE_INFO:
        raise InputError(f"Unknown engine {name!r}; choose one of {', '.join(ENGINE_INFO)}.")
    return name


def query_engine_for(engine: str) -> str:
    """The engine that answers point queries beside segmentation engine `engine`: itself if it can, else the
    registry's default query engine if it can, else the first that can."""
    from ..engines.registry import DEFAULT_QUERY_ENGINE, query_engines

    able = query_engines()
    if not able:
        raise InputError("No engine answers point queries; the service needs one.")
    for name in (engine, DEFAULT_QUERY_ENGINE):
        if name in able:
            return name
    return able[0]


@contextlib.contextmanager
def _numba_threads(n: int):
    """numba's thread count is per calling thread: a query request gathers on its own thread, so that
    concurrent requests use the cores side by side (a 100-point gather is too small to split well)."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(old)
