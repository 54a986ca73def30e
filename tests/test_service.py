"""The HTTP service (organscope.service) through FastAPI's TestClient: opening scans by path and by upload, the
allowed-directory and size guards, batched point queries checked against organscope.api.query, one-sentence
4xx errors, segmentation jobs with progress, the label map and the OpenAPI description.

Uses the bundled OpenKBP scan (128^3) and the shipped sparse model."""
from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import organscope as osc  # noqa: E402
from organscope import api  # noqa: E402
from organscope.engines.sparse.model import DEFAULT_MODEL  # noqa: E402
from organscope.modelcard import MODELS_DIR  # noqa: E402
from organscope.service.app import create_app  # noqa: E402

DATA = Path(osc.__file__).resolve().parent / "data"
SCAN = DATA / "okbp_validation_222.nii.gz"
SHIPPED = MODELS_DIR / f"{DEFAULT_MODEL}.onnx"
LOCAL = "http://127.0.0.1"  # the service answers loopback Host names only

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(not SHIPPED.exists(), reason=f"the shipped model {SHIPPED.name} is not in {MODELS_DIR}"),
]


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    """An allowed folder holding a copy of the bundled scan, and a folder beside it that is not allowed."""
    root = tmp_path_factory.mktemp("service")
    (root / "allowed").mkdir()
    (root / "outside").mkdir()
    shutil.copy(SCAN, root / "allowed" / "scan.nii.gz")
    shutil.copy(SCAN, root / "outside" / "secret.nii.gz")
    (root / "allowed" / "link.nii.gz").symlink_to(root / "outside" / "secret.nii.gz")
    return root / "allowed"


@pytest.fixture(scope="module")
def client(allowed):
    with TestClient(create_app(allowed_dir=allowed, max_upload_mb=8, max_scans=3), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def volume():
    return osc.load_volume(SCAN)


@pytest.fixture(scope="module")
def scan_id(client) -> str:
    r = client.post("/api/scans/open", json={"path": "scan.nii.gz"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def detail(r) -> str:
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"].endswith("."), body
    return body["detail"]


# ---- opening scans ---------------------------------------------------------------------------------------------
def test_open_by_path_returns_geometry(client, allowed, volume, scan_id):
    info = client.get(f"/api/scans/{scan_id}").json()
    assert info["shape"] == [128, 128, 128]
    np.testing.assert_allclose(info["affine"], volume.affine, atol=1e-6)
    np.testing.assert_allclose(info["spacing_mm"], volume.spacing_mm, atol=1e-6)
    assert info["axcodes"] == "".join(volume.axcodes) and info["name"] == "scan.nii.gz"
    # an absolute path inside the allowed folder works too
    r = client.post("/api/scans/open", json={"path": str(allowed / "scan.nii.gz")})
    assert r.status_code == 201 and r.json()["id"] != scan_id
    assert scan_id in [s["id"] for s in client.get("/api/scans").json()]


@pytest.mark.parametrize("path", ["../outside/secret.nii.gz", "link.nii.gz", "/etc/passwd", "ABS_OUTSIDE"])
def test_open_outside_allowed_dir_is_refused(client, allowed, path):
    if path == "ABS_OUTSIDE":
        path = str(allowed.parent / "outside" / "secret.nii.gz")
    r = client.post("/api/scans/open", json={"path": path})
    assert r.status_code == 403
    assert "outside the directory this server may read" in detail(r)


def test_open_missing_file_and_path_opening_off(client, tmp_path):
    r = client.post("/api/scans/open", json={"path": "nope.nii.gz"})
    assert r.status_code == 400 and "does not exist" in detail(r)
    with TestClient(create_app(allowed_dir=None), base_url=LOCAL) as c:
        r = c.post("/api/scans/open", json={"path": str(SCAN)})
        assert r.status_code == 403 and "--allow-dir" in detail(r)


def test_upload_opens_scan(client, volume):
    r = client.post("/api/scans/upload", files={"file": ("patient.nii.gz", SCAN.read_bytes(), "application/gzip")})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "patient.nii.gz" and info["shape"] == list(volume.shape)
    np.testing.assert_allclose(info["affine"], volume.affine, atol=1e-6)


def test_upload_over_cap_is_413(tmp_path):
    data = SCAN.read_bytes()  # ~390 kB
    with TestClient(create_app(max_upload_mb=0.25), base_url=LOCAL) as c:
        r = c.post("/api/scans/upload", files={"file": ("scan.nii.gz", data, "application/gzip")})
        assert r.status_code == 413
        assert "larger than this server's limit of 0.25 MB" in detail(r)
        # without a Content-Length (chunked), the stream itself is cut off at the cap
        boundary = "organscope-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scan.nii.gz\"\r\n"
                f"Content-Type: application/gzip\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
        r = c.post("/api/scans/upload", content=chunks,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 413 and "limit" in detail(r)
        assert c.get("/api/scans").json() == []


def test_upload_bad_files(client):
    r = client.post("/api/scans/upload", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 400 and ".nii.gz" in detail(r)
    r = client.post("/api/scans/upload", files={"file": ("broken.nii.gz", b"not a nifti at all", "application/gzip")})
    assert r.status_code == 400 and "corrupt" in detail(r)
    r = client.post("/api/scans/upload", json={"file": "x"})
    assert r.status_code == 400 and "multipart/form-data" in detail(r)


def test_lru_closes_least_recently_used(allowed):
    with TestClient(create_app(allowed_dir=allowed, max_scans=2), base_url=LOCAL) as c:
        ids = [c.post("/api/scans/open", json={"path": "scan.nii.gz"}).json()["id"] for _ in range(2)]
        assert c.get(f"/api/scans/{ids[0]}").status_code == 200  # ids[0] is now the most recently used
        third = c.post("/api/scans/open", json={"path": "scan.nii.gz"}).json()["id"]
        assert sorted(s["id"] for s in c.get("/api/scans").json()) == sorted([ids[0], third])
        r = c.post(f"/api/scans/{ids[1]}/query", json={"points": [[0, 0, 0]], "space": "voxel"})
        assert r.status_code == 404 and "open it again" in detail(r)
        assert c.delete(f"/api/scans/{third}").status_code == 204
        assert c.get(f"/api/scans/{third}").status_code == 404


def test_volume_endpoint_is_the_scan(client, scan_id, volume):
    r = client.get(f"/api/scans/{scan_id}/volume.nii.gz")
    assert r.status_code == 200
    img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), volume.array)


# ---- queries -----------------------------------------------------------------------------------------------------
def _check_against_api(results, expected):
    assert [r["organ"] for r in results] == list(expected.names)
    np.testing.assert_allclose([r["probability"] for r in results], expected.probability, atol=6e-5)
    assert [tuple(c["organ"] for c in r["top3"]) for r in results] == list(expected.top3_names)
    np.testing.assert_allclose([[c["probability"] for c in r["top3"]] for r in results],
                               expected.top3_probability, atol=6e-5)


def test_query_batch_matches_api(client, scan_id, volume):
    rng = np.random.default_rng(7)
    vox = rng.uniform(0, 127, (300, 3))
    vox[:3] = volume.world_to_voxel([[-300, -304.7, -81], [-304.7, -304.7, -171], [-300, -201.6, -156]])
    world = volume.voxel_to_world(vox)
    r = client.post(f"/api/scans/{scan_id}/query", json={"points": world.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["space"] == "world" and len(body["results"]) == 300
    expected = api.query(volume, world)
    _check_against_api(body["results"], expected)
    assert [r["organ"] for r in body["results"][:3]] == ["brainstem", "spinal_cord", "mandible"]
    # the voxel reported is the input-grid voxel nearest each point, and world_mm its centre
    np.testing.assert_array_equal([r["voxel"] for r in body["results"]], np.rint(vox).astype(int))
    np.testing.assert_allclose([r["world_mm"] for r in body["results"]], volume.voxel_to_world(np.rint(vox)),
                               atol=1e-3)
    # voxel indices (of the scan's own grid) give the same answers at the same voxels
    iv = np.rint(vox).astype(int)
    r = client.post(f"/api/scans/{scan_id}/query", json={"points": iv.tolist(), "space": "voxel"})
    assert r.status_code == 200
    _check_against_api(r.json()["results"], api.query(volume, iv, voxel=True))
    assert [x["organ"] for x in r.json()["results"]] == [x["organ"] for x in body["results"]]


def test_concurrent_queries_give_the_same_answers(client, scan_id, volume):
    """Requests running side by side (one engine thread each) answer exactly as one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    batches = [volume.voxel_to_world(rng.uniform(0, 127, (100, 3))) for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda pts: client.post(f"/api/scans/{scan_id}/query",
                                                        json={"points": pts.tolist()}), batches))
    for pts, r in zip(batches, answers):
        assert r.status_code == 200, r.text
        _check_against_api(r.json()["results"], api.query(volume, pts))


def test_query_bad_requests(client, scan_id):
    url = f"/api/scans/{scan_id}/query"
    r = client.post(url, content=b'{"points": [[1, 2, 3]', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in detail(r)
    r = client.post(url, content=b"points=1")
    assert r.status_code == 422 and "JSON object" in detail(r)
    r = client.post(url, json={"points": [[1, 2]]})
    assert r.status_code == 422 and "points.0" in detail(r)
    r = client.post(url, json={"points": []})
    assert r.status_code == 422 and "points" in detail(r)
    r = client.post(url, json={"points": [[0, 0, 0]], "space": "mm"})
    assert r.status_code == 422 and "space" in detail(r)
    r = client.post(url, json={"points": [["a", 0, 0]]})
    assert r.status_code == 422
    r = client.post(url, json={"points": [[1e5, 0, 0], [0, 0, 0]]})
    assert r.status_code == 400 and "outside the scan" in detail(r)
    r = client.post("/api/scans/nosuchscan/query", json={"points": [[0, 0, 0]]})
    assert r.status_code == 404 and "nosuchscan" in detail(r)


# ---- segmentation --------------------------------------------------------------------------------------------------
def test_segmentation_job_progress_and_labels(client, scan_id, volume):
    r = client.post(f"/api/scans/{scan_id}/segment")
    assert r.status_code == 202
    job = r.json()
    queued = client.post(f"/api/scans/{scan_id}/segment").json()  # waits behind the first (one at a time)
    early = client.get(f"/api/jobs/{queued['id']}/labels.nii.gz")
    assert early.status_code == 409 and "fetch its labels once its state is done" in detail(early)
    seen = []
    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"segmentation did not finish: {job}"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
        seen.append((job["stage"], job["fraction"]))
    assert job["state"] == "done", job
    assert job["fraction"] == 1.0 and job["stage"] == "done" and job["error"] is None
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions), "progress went backwards"
    # the default engine's stages, the ensemble's named by member ("sparse: level 1/2 ...")
    assert any("level" in stage for stage, _ in seen) or len(seen) < 3

    r = client.get(f"/api/jobs/{job['id']}/labels.nii.gz")
    assert r.status_code == 200
    img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    labels = np.asarray(img.dataobj)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-5)
    reference = api.segment(volume)
    np.testing.assert_array_equal(labels, reference.labels.array)
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    assert [o["label"] for o in job["organs_found"]] == present
    assert [o["name"] for o in job["organs_found"]] == [reference.names[v] for v in present]
    assert all(len(o["rgb"]) == 3 for o in job["organs_found"])
    organs = client.get("/api/organs").json()
    assert organs[0]["name"] == "background" and {o["name"] for o in organs} >= set(reference.names.values())

    while client.get(f"/api/jobs/{queued['id']}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/jobs/{queued['id']}/labels.nii.gz").content == r.content
    assert client.get("/api/jobs/nosuchjob").status_code == 404


# ---- description ---------------------------------------------------------------------------------------------------
def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/scans/open", "/api/scans/upload", "/api/scans/{scan_id}/query", "/api/scans/{scan_id}/segment",
                 "/api/jobs/{job_id}", "/api/jobs/{job_id}/labels.nii.gz", "/api/scans/{scan_id}/volume.nii.gz"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/api/scans/upload"]["post"]["requestBody"]["content"]
    assert "QueryRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == DEFAULT_MODEL


def test_viewer_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "organscope viewer" in r.text
    assert 'src="assets/viewer.js"' in r.text
    js = client.get("/assets/viewer.js")
    assert js.status_code == 200 and len(js.content) > 100_000  # NiiVue is bundled, nothing from the internet
    assert "http://" not in r.text and "https://" not in r.text


def test_serve_command_defaults():
    from organscope.cli import build_parser

    args = build_parser().parse_args(["serve", str(SCAN)])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.allow_dir is None and args.scan == [str(SCAN)]
    assert args.func.__name__ == "cmd_serve"



# ---- choosing the engine ------------------------------------------------------------------------------------------
def wait_done(c, job: dict, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"segmentation did not finish: {job}"
        time.sleep(0.05)
        job = c.get(f"/api/jobs/{job['id']}").json()
    return job


def test_engines_endpoint_lists_every_engine(client):
    from organscope.engines.registry import ENGINE_INFO, query_engines

    engines = client.get("/api/engines").json()
    assert [e["name"] for e in engines] == list(ENGINE_INFO)
    assert all(e["description"] == ENGINE_INFO[e["name"]] for e in engines)
    assert {e["name"] for e in engines if e["point_queries"]} == set(query_engines()) >= {"sparse"}
    assert [e["name"] for e in engines if e["default"]] == ["ensemble"]
    assert "/api/engines" in client.get("/openapi.json").json()["paths"]


@pytest.mark.skipif(not (MODELS_DIR / "cnn3d_openkbp.onnx").exists(), reason="no shipped cnn3d model")
def test_segment_with_the_engine_a_request_names(client, scan_id, volume):
    job = client.post(f"/api/scans/{scan_id}/segment", json={"engine": "cnn3d"})
    assert job.status_code == 202 and job.json()["engine"] == "cnn3d"
    job = wait_done(client, job.json())
    assert job["state"] == "done" and job["engine"] == "cnn3d", job
    labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(
        client.get(f"/api/jobs/{job['id']}/labels.nii.gz").content)).dataobj)
    reference = api.segment(volume, engine="cnn3d")
    np.testing.assert_array_equal(labels, reference.labels.array)
    found = job["organs_found"]
    assert [o["name"] for o in found] == reference.present()
    for o in found:
        assert 0 < o["confidence"] <= 1
        assert o["confidence"] == pytest.approx(reference.confidence[o["name"]], abs=1e-4)
    # an organ subset, and the default engine's job reports its confidence too
    sub = wait_done(client, client.post(f"/api/scans/{scan_id}/segment",
                                        json={"engine": "cnn3d", "organs": ["mandible"]}).json())
    assert [o["name"] for o in sub["organs_found"]] == ["mandible"]
    plain = wait_done(client, client.post(f"/api/scans/{scan_id}/segment").json())
    assert plain["engine"] == "ensemble" and all(0 < o["confidence"] <= 1 for o in plain["organs_found"])


def test_unknown_engine_or_organ_is_refused_with_one_sentence(client, scan_id):
    from organscope.engines.registry import ENGINE_INFO

    r = client.post(f"/api/scans/{scan_id}/segment", json={"engine": "magic"})
    assert r.status_code == 400
    text = detail(r)
    assert "magic" in text and all(name in text for name in ENGINE_INFO) and text.count(". ") == 0
    r = client.post(f"/api/scans/{scan_id}/segment", json={"engine": "sparse", "organs": ["liver"]})
    assert r.status_code == 400 and "liver" in detail(r)
    r = client.post(f"/api/scans/{scan_id}/segment", json={"engine": 3})
    assert r.status_code == 422 and detail(r)
    with pytest.raises(Exception, match="Unknown engine 'magic'"):
        create_app(engine="magic")


@pytest.mark.skipif(not (MODELS_DIR / "cnn3d_openkbp.onnx").exists(), reason="no shipped cnn3d model")
def test_a_server_segmenting_with_cnn3d_queries_with_the_default_query_engine(allowed, volume):
    with TestClient(create_app(allowed_dir=allowed, engine="cnn3d"), base_url=LOCAL) as c:
        health = c.get("/api/health").json()
        assert health["engine"] == "cnn3d" and health["query_engine"] == "sparse"
        sid = c.post("/api/scans/open", json={"path": "scan.nii.gz"}).json()["id"]
        centre = volume.voxel_to_world(np.array([[64.0, 64.0, 64.0]]))[0].tolist()
        r = c.post(f"/api/scans/{sid}/query", json={"points": [centre]})
        assert r.status_code == 200
        assert r.json()["results"][0]["organ"] == api.query(volume, [centre]).names[0]
        job = wait_done(c, c.post(f"/api/scans/{sid}/segment").json())
        assert job["state"] == "done" and job["engine"] == "cnn3d"
        assert [e["name"] for e in c.get("/api/engines").json() if e["default"]] == ["cnn3d"]


def test_a_fine_scan_reports_its_own_voxels(client, allowed, volume):
    """A scan finer than the sparse model's training data is read on a coarser working grid; the answers still
    name the scan's own voxel at each point (and its centre in mm), not the working grid's."""
    import nibabel as nib

    arr = np.repeat(np.repeat(np.asarray(volume.array)[32:96, 32:96, 40:80], 2, axis=0), 2, axis=1)
    aff = volume.affine.copy()
    aff[:3, 3] = volume.voxel_to_world([[32 - 0.25, 32 - 0.25, 40]])[0]
    aff[:3, 0] /= 2
    aff[:3, 1] /= 2
    nib.save(nib.Nifti1Image(arr.astype(np.int16), aff), allowed / "fine.nii.gz")
    fine = osc.load_volume(allowed / "fine.nii.gz")
    eng = api.engine("sparse")
    assert eng.prepare(fine).work is not None  # ~2 mm in-plane: below the card's 3.75 mm
    r = client.post("/api/scans/open", json={"path": "fine.nii.gz"})
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    vox = np.array([[10, 11, 5], [63, 64, 20], [101, 37, 33], [127, 127, 39]])
    r = client.post(f"/api/scans/{fid}/query", json={"points": vox.tolist(), "space": "voxel"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["voxel"] for x in res] == vox.tolist()
    np.testing.assert_allclose([x["world_mm"] for x in res], fine.voxel_to_world(vox), atol=1e-3)
    assert [x["organ"] for x in res] == list(api.query(fine, vox, voxel=True).names)
    pts = fine.voxel_to_world(vox + 0.3)
    r = client.post(f"/api/scans/{fid}/query", json={"points": pts.tolist()})
    assert [x["voxel"] for x in r.json()["results"]] == vox.tolist()
