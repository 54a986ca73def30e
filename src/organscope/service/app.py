"""The HTTP service: a FastAPI app around a ScanStore, plus the browser viewer's static files at `/`.

    from organscope.service import create_app
    app = create_app(allowed_dir="/data/scans")          # run with: uvicorn.run(app, host="127.0.0.1")

Endpoints (all JSON under /api; the OpenAPI description is at /openapi.json, browsable at /docs):

    POST   /api/scans/open                 {"path": ...} inside the allowed directory  -> ScanInfo
    POST   /api/scans/upload               multipart "file" (.nii/.nii.gz/.nrrd/.mha)   -> ScanInfo
    GET    /api/scans                      open scans;  GET/DELETE /api/scans/{id}
    GET    /api/scans/{id}/volume.nii.gz   the scan itself (for the viewer)
    POST   /api/scans/{id}/query           {"points": [[x, y, z], ...], "space": "world"|"voxel"}
    POST   /api/scans/{id}/segment         optional {"engine": ..., "organs": [...]}: start a segmentation job -> JobInfo (202)
    GET    /api/jobs/{job}                 engine, state, stage, fraction (and organs found with confidence when done)
    GET    /api/jobs/{job}/labels.nii.gz   the label map (uint8 NIfTI on the scan's grid, names in its header)
    GET    /api/organs                     every class of the query model: label, name, display name, colour
    GET    /api/engines                    the engines: name, description, point queries, default

Errors: one sentence in {"detail": ...}, with 400 (unusable input, or a Host the server does not answer to),
401 (token missing), 403 (path not allowed), 404 (unknown id), 409 (result not ready), 413 (upload, request body
or scan too large), 422 (malformed request) or 429 (segmentation queue full, with Retry-After).

Safety (security.py, guard.py): only Host names on the allow-list are answered (loopback by default), the API
needs `Authorization: Bearer TOKEN` when a token is set, request bodies and scan sizes are capped before anything
is allocated, uploads must be self-contained files, every file opened by path (data files and DICOM slices
included, symlinks resolved) lies inside the allowed directory, and every response carries security headers.
"""
from __future__ import annotations


import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError, OrganscopeError, VolumeTooLarge
from . import schemas as S
from .guard import TooLarge
from .security import Guard, SecurityMiddleware, allowed_host_set
from .store import DEFAULT_MAX_JOBS, DEFAULT_MAX_VOXELS, UPLOAD_SUFFIXES, Busy, Forbidden, NotFound, NotReady, ScanStore

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: JSON request bodies larger than this are refused (413) before they are parsed.
DEFAULT_MAX_BODY_MB = 4
#: Seconds a client is asked to wait when the segmentation queue is full.
RETRY_AFTER_S = 30
NIFTI_TYPE = "application/gzip"


class UploadTooLarge(OrganscopeError):
    pass


def organ_entry(label: int, name: str) -> dict:
    """label, name, display name and viewer colour of one class (0 = background)."""
    from ..organs import ORGANS

    organ = ORGANS.get(name)
    if label == 0:
        display, rgb = "Background", (0, 0, 0)
    elif organ is not None:
        display, rgb = organ.display_name, tuple(int(c) for c in organ.rgb)
    else:
        display, rgb = name.replace("_", " ").capitalize(), (200, 200, 200)
    return {"label": label, "name": name, "display_name": display, "rgb": list(rgb)}


def organ_table(classes) -> list[dict]:
    """label, name, display name and viewer colour of each class (0 = background)."""
    return [organ_entry(label, name) for label, name in enumerate(classes)]


def engine_table(default: str) -> list[dict]:
    """Every engine of the registry: name, description, whether it answers point queries, whether it is the
    default (no model is loaded to say so)."""
    from ..engines.registry import ENGINE_INFO, query_engines

    able = set(query_engines())
    return [{"name": n, "description": d, "point_queries": n in able, "default": n == default}
            for n, d in ENGINE_INFO.items()]


def create_app(*, allowed_dir: str | os.PathLike | None = None, max_upload_mb: float = 512,
               engine: str | None = None, max_scans: int = 4, preload=(), viewer: bool = True,
               max_voxels: int = DEFAULT_MAX_VOXELS, max_body_mb: float = DEFAULT_MAX_BODY_MB,
               max_jobs: int = DEFAULT_MAX_JOBS, allowed_hosts=(), token: str | None = None) -> FastAPI:
    """The service app. `allowed_dir`: where scans may be opened by path (None: path opening is off);
    `max_upload_mb`: upload size cap (the file as sent); `max_voxels`: scan size cap (declared in the header,
    checked before reading, and of the result); `max_body_mb`: cap of any other request body; `max_jobs`:
    segmentations queued or running at once (more get 429); `engine`: the segmentation engine when a request names
    none (the registry's default if None; point queries use it if it answers them, else the default query engine);
    `max_scans`: open scans kept in memory (least recently used out); `preload`: scan paths opened at start
    (trusted: the operator's own, not checked against allowed_dir); `allowed_hosts`: Host names answered besides
    the loopback ones; `token`: if set, every /api request needs `Authorization: Bearer <token>`."""
    if token is not None and not token.strip():
        raise InputError("The token is empty; give a long random string, or no token.")
    store = ScanStore(engine=engine, max_scans=max_scans, allowed_dir=allowed_dir, max_voxels=max_voxels,
                      max_jobs=max_jobs)
    cap_bytes = int(max_upload_mb * 1024 * 1024)
    organs = organ_table(store.classes)
    engines = engine_table(store.engine_name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        store.shutdown()

    app = FastAPI(title="organscope", version=__version__, lifespan=lifespan,
                  description="Which organ is where in a CT scan: point queries and segmentation on a CPU.")
    app.state.store = store
    app.state.max_upload_bytes = cap_bytes
    app.add_middleware(SecurityMiddleware, guard=Guard(allowed_hosts=allowed_host_set(allowed_hosts), token=token,
                                                       max_body_bytes=int(max_body_mb * 1024 * 1024)))
    for path in preload:
        store.open_path(path, check_allowed=False)

    # ---- errors: one sentence each -----------------------------------------------------------------------
    status_of = [(Forbidden, 403), (NotFound, 404), (NotReady, 409), (UploadTooLarge, 413), (TooLarge, 413),
                 (VolumeTooLarge, 413), (Busy, 429), (OrganscopeError, 400)]

    @app.exception_handler(OrganscopeError)
    async def _organscope_error(request: Request, exc: OrganscopeError):
        code = next(c for cls, c in status_of if isinstance(exc, cls))
        headers = {"Retry-After": str(RETRY_AFTER_S)} if code == 429 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        text = exc.detail if isinstance(exc.detail, str) else "The request was refused."
        if exc.status_code == 400 and text == "There was an error parsing the body":
            text = "The request body could not be read; send a JSON object encoded as UTF-8."
        text = text if text.endswith(".") else text + "."
        return JSONResponse({"detail": text}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # no traceback, no server detail to the client
        return JSONResponse({"detail": f"The server failed on this request ({type(exc).__name__}); the server's "
                                       "log has the details."}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request body"
        if first.get("type") == "json_invalid":
            text = "The request body is not valid JSON; send a JSON object."
        elif tuple(first.get("loc", ())) == ("body",):
            text = "The request body must be a JSON object sent with Content-Type: application/json."
        else:
            text = f"Invalid request at {where}: {first.get('msg', 'malformed')}."
        if len(errors) > 1:
            text = text[:-1] + f" (and {len(errors) - 1} more problem(s))."
        return JSONResponse({"detail": text}, status_code=422)

    err = {c: {"model": S.ErrorBody} for c in (400, 401, 403, 404, 409, 413, 422, 429)}

    # ---- scans -------------------------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict:
        model = getattr(getattr(store.query_engine, "model", None), "onnx_path", None)
        return {"status": "ok", "version": __version__, "engine": store.engine_name,
                "query_engine": store.query_engine_name, "model": Path(model).stem if model else None,
                "open_scans": len(store.list()),
                "max_scans": store.max_scans, "path_opening": store.allowed_dir is not None,
                "max_upload_mb": cap_bytes / (1024 * 1024), "max_voxels": store.max_voxels,
                "max_jobs": store.max_jobs}

    @app.get("/api/organs", response_model=list[S.OrganInfo])
    def list_organs():
        return organs

    @app.get("/api/engines", response_model=list[S.EngineInfo])
    def list_engines():
        return engines

    @app.post("/api/scans/open", response_model=S.ScanInfo, responses=err, status_code=201)
    def open_scan(body: S.OpenPath):
        return store.open_path(body.path).info()

    @app.post("/api/scans/upload", response_model=S.ScanInfo, responses=err, status_code=201,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["file"],
                  "properties": {"file": {"type": "string", "format": "binary",
                                          "description": "one .nii, .nii.gz, .nrrd or .mha file"}}}}}}})
    async def upload_scan(request: Request):
        from starlette.concurrency import run_in_threadpool

        tmpdir, data_path, filename = await _receive_upload(request, cap_bytes)
        try:
            entry = await run_in_threadpool(store.open_upload, data_path, filename)
        finally:
            _remove_tree(tmpdir)
        return JSONResponse(entry.info(), status_code=201)

    @app.get("/api/scans", response_model=list[S.ScanInfo])
    def list_scans():
        return [e.info() for e in store.list()]

    @app.get("/api/scans/{scan_id}", response_model=S.ScanInfo, responses=err)
    def scan_info(scan_id: str):
        return store.get(scan_id).info()

    @app.delete("/api/scans/{scan_id}", status_code=204, responses=err)
    def close_scan(scan_id: str):
        store.close(scan_id)
        return Response(status_code=204)

    @app.get("/api/scans/{scan_id}/volume.nii.gz", responses=err,
             response_class=Response, summary="The scan as .nii.gz (its own grid and affine), for the viewer")
    def scan_volume(scan_id: str):
        return Response(store.get(scan_id).volume_nifti(), media_type=NIFTI_TYPE)

    # ---- queries -------------------------------------------------------------------------------------------
    @app.post("/api/scans/{scan_id}/query", response_model=S.QueryResponse, responses=err)
    async def query(scan_id: str, body: S.QueryRequest):
        # the work runs on the store's query pool (one thread per core, first come first served): with FastAPI's
        # 40-thread pool, 8 concurrent requests fought over the interpreter lock and the slowest waited 4x the
        # median (bench_service: p99 133 ms against p50 31 ms)
        import asyncio

        loop = asyncio.get_running_loop()
        content = await loop.run_in_executor(store.query_pool, _answer, store, scan_id, body)
        return Response(content, media_type="application/json")

    # ---- segmentation jobs ------------------------------------------------------------------------------
    def job_info(job) -> dict:
        out = {"id": job.id, "scan_id": job.scan_id, "engine": job.engine, "state": job.state, "stage": job.stage,
               "fraction": round(job.fraction, 4), "error": job.error, "seconds": None, "organs_found": None}
        if job.finished is not None:
            out["seconds"] = round(job.finished - job.created, 3)
        if job.state == "done":  # label values and names of the engine that ran (engines may differ)
            seg = job.segmentation
            out["organs_found"] = [
                {**organ_entry(v, seg.names[v]), "confidence": _rounded(seg.confidence.get(seg.names[v])),
                 "cut_off": seg.names[v] in seg.qc.cut_off() if getattr(seg, "qc", None) else None}
                for v in job.present if v > 0 and v in seg.names]
            out["qc"] = seg.qc.to_dict() if getattr(seg, "qc", None) is not None else None
        return out

    @app.post("/api/scans/{scan_id}/segment", response_model=S.JobInfo, responses=err, status_code=202)
    def start_segmentation(scan_id: str, body: S.SegmentRequest | None = None):
        body = body or S.SegmentRequest()
        job = store.start_segmentation(scan_id, engine=body.engine, organs=body.organs)
        return JSONResponse(job_info(job), status_code=202)

    @app.get("/api/jobs/{job_id}", response_model=S.JobInfo, responses=err)
    def job_status(job_id: str):
        return job_info(store.job(job_id))

    @app.get("/api/jobs/{job_id}/labels.nii.gz", responses=err, response_class=Response,
             summary="The label map as .nii.gz on the scan's grid (organ names in a header extension)")
    def job_labels(job_id: str):
        return Response(store.job(job_id).labels_nifti(), media_type=NIFTI_TYPE)

    # ---- the viewer (last: it answers every path the API does not) ------------------------------------------
    if viewer and (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="viewer")
    return app


def _answer(store: ScanStore, scan_id: str, body: S.QueryRequest) -> bytes:
    """The JSON answer (bytes) of one query request: the organ at each point, with the scan's own voxel there."""
    import orjson

    from ..qc import query_region  # the scan's body region: computed once per open scan

    pts = np.asarray(body.points, dtype=float)
    if not np.isfinite(pts).all():
        raise InputError("Query points must be finite numbers.")
    entry, res = store.query(scan_id, pts, voxel=body.space == "voxel")
    region, check = query_region(store.query_engine, entry.volume)
    qc = None if check is None else {"model_region": region, **check.to_dict(), "in_region": check.region == region}
    names = res.names
    if qc is not None and not qc["in_region"]:
        names = tuple("unknown" for _ in names)
    # the scan's own voxel at each point (the engine may have read a coarser working grid: res.voxels)
    vox_in = np.rint(pts if body.space == "voxel" else entry.volume.world_to_voxel(pts)).astype(int)
    world = np.round(entry.volume.voxel_to_world(vox_in), 3).tolist()
    prob = np.round(res.probability.astype(float), 4).tolist()
    top_p = np.round(res.top3_probability.astype(float), 4).tolist()
    results = [{"point": p, "voxel": v, "world_mm": w, "organ": n, "label": lab, "probability": pr,
                "top3": [{"organ": tn[0], "probability": tp[0]}, {"organ": tn[1], "probability": tp[1]},
                         {"organ": tn[2], "probability": tp[2]}]}
               for p, v, w, n, lab, pr, tn, tp in zip(body.points, vox_in.tolist(), world, names,
                                                     res.labels.tolist(), prob, res.top3_names, top_p)]
    return orjson.dumps({"scan_id": scan_id, "space": body.space, "results": results, "qc": qc})


async def _receive_upload(request: Request, cap_bytes: int) -> tuple[str, Path, str]:
    """Stream a multipart upload to a temporary folder, refusing it (413) as soon as it passes the cap.
    Returns (folder, file path, original file name); the caller removes the folder."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    cap_mb = cap_bytes / (1024 * 1024)
    too_large = UploadTooLarge(f"The upload is larger than this server's limit of {cap_mb:g} MB; "
                               "open the scan by path, or restart the server with a larger --max-upload-mb.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap_bytes + 64 * 1024:
        raise too_large  # refused before reading the body
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InputError("Upload a scan as multipart/form-data with the file in a field named 'file'.")

    async def limited():
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > cap_bytes + 64 * 1024:  # the multipart framing adds a little to the file itself
                raise too_large
            yield chunk

    try:
        form = await MultiPartParser(request.headers, limited(), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise InputError(f"The upload is not a readable multipart form ({exc.message}).") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InputError("The upload has no file in a field named 'file'.")
    filename = _client_name(upload.filename or "")
    if not filename.lower().endswith(UPLOAD_SUFFIXES):
        await upload.close()
        raise InputError(f"Upload one scan file ending in {', '.join(UPLOAD_SUFFIXES)} (got {filename!r}); "
                         "open DICOM series and .mhd files by path.")
    if upload.size is not None and upload.size > cap_bytes:
        await upload.close()
        raise too_large
    tmpdir = tempfile.mkdtemp(prefix="organscope-upload-")
    suffix = next(s for s in UPLOAD_SUFFIXES if filename.lower().endswith(s))
    data_path = Path(tmpdir) / f"upload{suffix}"
    try:
        with open(data_path, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
    except BaseException:
        _remove_tree(tmpdir)
        raise
    finally:
        await upload.close()
    return tmpdir, data_path, filename


def _client_name(name: str) -> str:
    """The client's file name as the service shows it: its last part, printable, at most 200 characters."""
    name = "".join(c for c in name.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    return name if len(name) <= 200 else name[:100] + "…" + name[-99:]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
