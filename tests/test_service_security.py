"""Issue 15, the HTTP service half: each hostile request that worked on the service before, sent again and shown
closed. Reading a server file through an upload's or a by-path header's external data file, DNS rebinding (Host),
a symlinked DICOM slice, a gzip bomb and a huge JSON body, an unbounded job queue and jobs of closed scans,
500s with tracebacks and server paths, missing security headers; plus the bearer token and the non-loopback
bind. FastAPI's TestClient throughout, and one real `organscope serve` on a loopback port."""
from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import organscope as osc  # noqa: E402
from organscope import pipeline  # noqa: E402
from organscope.cli import main as cli_main  # noqa: E402
from organscope.engines.sparse.model import DEFAULT_MODEL  # noqa: E402
from organscope.modelcard import MODELS_DIR  # noqa: E402
from organscope.service.app import create_app  # noqa: E402

SCAN = Path(osc.__file__).resolve().parent / "data" / "okbp_validation_222.nii.gz"
LOCAL = "http://127.0.0.1"
TOKEN = "s3cret-token-for-the-tests-0123456789"

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(not (MODELS_DIR / f"{DEFAULT_MODEL}.onnx").exists(), reason="the shipped model is missing"),
]

#: A secret server file: raw int16 values 42..116 (they fail the CT check, whose message used to print them).
SECRET_VALUES = np.arange(42, 117, dtype="<i2")
SECRET_MARK = b"TOPSECRET-server-file"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("security")
    (root / "allowed").mkdir()
    (root / "outside").mkdir()
    secret = root / "outside" / "secret.raw"
    secret.write_bytes(SECRET_MARK + SECRET_VALUES.tobytes())
    return root


@pytest.fixture(scope="module")
def client(root):
    with TestClient(create_app(allowed_dir=root / "allowed"), base_url=LOCAL) as c:
        yield c


def one_sentence(r) -> str:
    text = r.json()["detail"]
    assert isinstance(text, str) and text.endswith(".") and "Traceback" not in text, text
    assert "/tmp" not in text and "organscope-upload" not in text and "pytest-of" not in text, text
    return text


def assert_no_secret(r) -> None:
    assert SECRET_MARK not in r.content and b"42 to 116" not in r.content and b"secret.raw" not in r.content.lower()


def mha_header(data_file: str, dims=(5, 5, 3)) -> bytes:
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {dims[0]} {dims[1]} {dims[2]}\nElementType = MET_SHORT\n"
            f"ElementSpacing = 1 1 1\nHeaderSize = {len(SECRET_MARK)}\nElementDataFile = {data_file}\n").encode()


def nrrd_header(data_file: str) -> bytes:
    return (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 5 3\nspace: left-posterior-superior\nspace directions: "
            f"(1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\nbyte skip: {len(SECRET_MARK)}\n"
            f"data file: {data_file}\n\n").encode()


# ---- 1. external data files: uploads and by-path headers -----------------------------------------------------------
def test_upload_naming_a_server_file_is_refused(client, root):
    secret = str(root / "outside" / "secret.raw")
    mha = mha_header(secret)
    assert len(mha) < 200  # the 150-byte .mha of the report
    r = client.post("/api/scans/upload", files={"file": ("x.mha", mha, "application/octet-stream")})
    assert r.status_code == 400 and "ElementDataFile" in one_sentence(r) and "x.mha" in one_sentence(r)
    assert_no_secret(r)
    for key in ("data file", "datafile"):
        nrrd = nrrd_header(secret).replace(b"data file", key.encode())
        r = client.post("/api/scans/upload", files={"file": ("x.nrrd", nrrd, "application/octet-stream")})
        assert r.status_code == 400 and "data file" in one_sentence(r)
        assert_no_secret(r)
    assert client.get("/api/scans").json() == []  # nothing was opened, so no volume.nii.gz to download


def test_by_path_header_with_data_file_outside_is_refused(client, root):
    allowed = root / "allowed"
    (allowed / "abs.mhd").write_bytes(mha_header(str(root / "outside" / "secret.raw")))
    (allowed / "rel.mhd").write_bytes(mha_header("../outside/secret.raw"))
    (allowed / "abs.nhdr").write_bytes(nrrd_header(str(root / "outside" / "secret.raw")))
    (allowed / "rel.nhdr").write_bytes(nrrd_header("../outside/secret.raw"))
    (allowed / "link.raw").symlink_to(root / "outside" / "secret.raw")
    (allowed / "vialink.mhd").write_bytes(mha_header("link.raw"))
    for name in ("abs.mhd", "rel.mhd", "abs.nhdr", "rel.nhdr", "vialink.mhd"):
        r = client.post("/api/scans/open", json={"path": name})
        assert r.status_code == 403, (name, r.text)
        assert "outside the directory" in one_sentence(r) and str(root) not in r.text
        assert_no_secret(r)


def test_by_path_header_with_its_data_inside_still_opens(client, root):
    """A .mhd + .raw pair inside the allowed folder is what by-path opening is for: it still works."""
    arr = np.asarray(nib.load(str(SCAN)).dataobj, dtype="<i2")[32:96, 32:96, 32:96]
    allowed = root / "allowed"
    (allowed / "pair.raw").write_bytes(np.asfortranarray(arr).tobytes(order="F"))
    (allowed / "pair.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 64\nElementType = MET_SHORT\n"
                                      "ElementSpacing = 1 1 1\nElementDataFile = pair.raw\n")
    r = client.post("/api/scans/open", json={"path": "pair.mhd"})
    assert r.status_code == 201, r.text
    assert client.delete(f"/api/scans/{r.json()['id']}").status_code == 204


# ---- 2. DNS rebinding: the Host header ----------------------------------------------------------------------------------
def test_host_allow_list(root):
    with TestClient(create_app(allowed_hosts=["scanner.lan"]), base_url=LOCAL) as c:
        r = c.get("/api/health", headers={"Host": "evil.example"})
        assert r.status_code == 400 and "Host" in one_sentence(r)
        r = c.get("/", headers={"Host": "evil.example:8000"})
        assert r.status_code == 400
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]", "[::1]:8000", "scanner.lan:80"):
            assert c.get("/api/health", headers={"Host": host}).status_code == 200, host


# ---- 3. a symlinked slice in an allowed DICOM folder ----------------------------------------------------------------
def test_symlinked_dicom_slice_is_refused(client, root):
    from helpers.dicom_rt import make_ct_series, phantom_ct

    series = root / "allowed" / "series"
    make_ct_series(series, phantom_ct((16, 16, 4)))
    make_ct_series(root / "outside" / "other", phantom_ct((16, 16, 4)))
    victim = sorted((root / "outside" / "other").iterdir())[0]
    (series / "zz_extra.dcm").symlink_to(victim)
    r = client.post("/api/scans/open", json={"path": "series"})
    assert r.status_code == 403 and "zz_extra.dcm" in one_sentence(r) and str(root) not in r.text
    r = client.post("/api/scans/open", json={"path": f"series/{sorted(series.iterdir())[0].name}"})
    assert r.status_code == 403  # one slice of the folder opens the folder


def test_dicom_folder_over_the_voxel_cap_is_refused_before_its_pixels_are_read(root, monkeypatch):
    """The guard does not estimate a DICOM folder's size; the reader, given the server's caps, refuses it from
    the slices' headers (rows x columns x slices) before any pixel data is decoded."""
    from helpers.dicom_rt import make_ct_series, phantom_ct

    from organscope.io import dicom

    make_ct_series(root / "allowed" / "big", phantom_ct((32, 32, 6)))  # 6,144 voxels
    decoded = []
    real = dicom.pydicom.dcmread

    def spy(*a, **k):
        ds = real(*a, **k)
        if not k.get("stop_before_pixels"):
            decoded.append(a[0])
        return ds

    monkeypatch.setattr(dicom.pydicom, "dcmread", spy)
    with TestClient(create_app(allowed_dir=root / "allowed", max_voxels=4096), base_url=LOCAL) as c:
        r = c.post("/api/scans/open", json={"path": "big"})
    assert r.status_code == 413 and "more than the limit" in one_sentence(r), r.text
    assert decoded == []  # refused from the headers: no slice was read with its pixel data


# ---- 4. memory: decompression bombs and huge JSON bodies ---------------------------------------------------------------
def _nifti_bomb() -> bytes:
    """A ~1 MB .nii.gz declaring 1024 x 1024 x 512 int16 (1 GiB): a header member, then 1024 gzip members of 1 MB
    of zeros each (a gzip reader reads them all)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    return gzip.compress(hdr.binaryblock + b"\0" * 4) + member * 1024


def test_gzip_bomb_upload_is_refused_before_inflating(client):
    bomb = _nifti_bomb()
    assert len(bomb) < 2 << 20
    t0 = time.perf_counter()
    r = client.post("/api/scans/upload", files={"file": ("bomb.nii.gz", bomb, "application/gzip")})
    assert r.status_code == 413 and "bomb.nii.gz" in one_sentence(r) and "--max-voxels" in one_sentence(r)
    assert time.perf_counter() - t0 < 5


def test_compressed_mha_inflating_past_its_header_is_refused(client):
    """Declares 5 x 5 x 3 int16 (150 bytes) but its zlib stream inflates to 64 MB."""
    data = zlib.compress(bytes(64 << 20), 9)
    mha = (b"ObjectType = Image\nNDims = 3\nDimSize = 5 5 3\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
           b"CompressedData = True\nElementDataFile = LOCAL\n" + data)
    r = client.post("/api/scans/upload", files={"file": ("b.mha", mha, "application/octet-stream")})
    assert r.status_code == 413 and "inflates" in one_sentence(r)


def test_huge_json_body_is_refused_before_parsing(client):
    big = b'{"points": [' + b"[1.0, 2.0, 3.0]," * 400_000 + b"[1, 2, 3]]}"  # 6.4 MB
    r = client.post("/api/scans/deadbeef0000/query", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "MB" in one_sentence(r)

    def chunks():  # no Content-Length: streamed, refused once it passes the cap
        for _ in range(100):
            yield b" " * (1 << 16)

    r = client.post("/api/scans/deadbeef0000/query", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# ---- 5. the job queue ----------------------------------------------------------------------------------------------------
def test_job_queue_is_bounded_and_closing_a_scan_cancels_its_jobs(monkeypatch):
    started, release, stopped = threading.Event(), threading.Event(), threading.Event()
    calls = []

    def slow_segment(volume, options, progress=None):
        calls.append(options.engine)
        started.set()
        for i in range(2000):  # a long engine that reports progress
            progress("working", i / 2000)
            if release.wait(0.01):
                break
        stopped.set()
        raise AssertionError("not cancelled")

    monkeypatch.setattr(pipeline, "segment_volume", slow_segment)
    with TestClient(create_app(max_jobs=2, preload=[SCAN]), base_url=LOCAL) as c:
        scan = c.get("/api/scans").json()[0]["id"]
        first = c.post(f"/api/scans/{scan}/segment").json()
        assert started.wait(30)
        second = c.post(f"/api/scans/{scan}/segment").json()  # queued behind the first
        r = c.post(f"/api/scans/{scan}/segment")
        assert r.status_code == 429 and r.headers["Retry-After"].isdigit() and one_sentence(r)
        store = c.app.state.store
        jobs = store.get(scan).jobs
        assert jobs[first["id"]].state == "running" and jobs[second["id"]].state == "queued"
        assert c.delete(f"/api/scans/{scan}").status_code == 204
        deadline = time.monotonic() + 30
        while jobs[first["id"]].state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs[first["id"]].state == "cancelled" and not stopped.is_set()  # stopped at a progress report
        time.sleep(0.3)
        assert jobs[second["id"]].state == "cancelled" and len(calls) == 1  # the queued job never ran
        assert store._active_jobs == 0
        release.set()


# ---- 6. bad requests: 4xx with one sentence, no server paths; security headers -----------------------------------------
def test_bad_paths_get_one_sentence(client):
    for path in ("scan\x00.nii.gz", "a" * 5000, "../" * 40 + "etc/passwd", "/etc/passwd", "missing.nii.gz"):
        r = client.post("/api/scans/open", json={"path": path})
        assert 400 <= r.status_code < 500, (path[:20], r.status_code)
        one_sentence(r)
    r = client.post("/api/scans/open", content=b'{"path": "\xff\xfe"}', headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and one_sentence(r)
    r = client.get("/api/scans/%ff%00")
    assert r.status_code == 404 and one_sentence(r)


def test_upload_errors_name_the_clients_file_not_the_temp_path(client):
    bad = mha_header("LOCAL").replace(b"MET_SHORT", b"MET_FLOAT") + bytes(300)  # values 0: not a CT
    r = client.post("/api/scans/upload", files={"file": ("my scan.mha", bad, "application/octet-stream")})
    assert r.status_code == 400 and "my scan.mha" in one_sentence(r)


def test_security_headers_on_every_response(client):
    for r in (client.get("/"), client.get("/api/health"), client.get("/api/scans/nope"),
              client.get("/api/health", headers={"Host": "evil.example"})):
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"


def test_viewer_page_loads_only_what_its_csp_allows(client):
    """The viewer's page loads its own script and style sheet only (no inline script, no other origin)."""
    html = client.get("/").text
    assert "<script>" not in html and "http://" not in html and "https://" not in html
    assert client.get("/assets/viewer.js").status_code == 200


# ---- the token and the bind address ---------------------------------------------------------------------------------
def test_token_is_required_and_accepted():
    with TestClient(create_app(token=TOKEN), base_url=LOCAL) as c:
        r = c.get("/api/scans")
        assert r.status_code == 401 and "Bearer" in one_sentence(r)
        assert c.get("/api/scans", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/scans", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/").status_code == 200  # the viewer page itself; it sends the token from #token=


def test_non_loopback_bind_without_token_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("ORGANSCOPE_TOKEN", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_checks_host_and_token(tmp_path):
    port = _free_port()
    env = {**os.environ, "ORGANSCOPE_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "organscope.cli", "serve", "--port", str(port),
                                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/api/health", headers=auth, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        assert httpx.get(f"{base}/api/health", headers={**auth, "Host": "evil.example"}).status_code == 400
        assert httpx.get(f"{base}/api/health").status_code == 401
        assert httpx.get(f"http://localhost:{port}/api/health", headers=auth).status_code == 200
        r = httpx.get(f"{base}/")
        assert r.status_code == 200 and r.headers["X-Frame-Options"] == "DENY"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
