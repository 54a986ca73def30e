"""The browser viewer in a real headless browser (Debian's chromium driven by Playwright): `organscope serve` runs
on a loopback port with the bundled scan, the page shows it with NiiVue, a mouse click inside the brainstem shows
that organ and its probability (checked against organscope.api.query at the clicked point), and the Segment
button overlays the label map with its legend. Screenshots go to the test's tmp folder and to work/.

Skipped only when chromium is not installed (CI installs it in .ci/run)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

import organscope as osc
from organscope import api
from organscope.organs import get_organ

REPO = Path(__file__).resolve().parents[1]
SCAN = Path(osc.__file__).resolve().parent / "data" / "okbp_validation_222.nii.gz"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
BRAINSTEM_MM = (-300.0, -304.7, -81.0)  # inside the brainstem of the bundled scan (see README)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install -y chromium; .ci/run does this)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`organscope serve SCAN` on a free loopback port; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "organscope.cli", "serve", str(SCAN), "--port", str(port),
                                 "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"organscope serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _coloured_pixels(png: Path, box) -> int:
    """Pixels of the canvas area whose colour is not grey (the CT is drawn in grey; overlay and crosshair are not)."""
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB").crop(box)).astype(int)
    spread = img.max(axis=2) - img.min(axis=2)
    return int((spread > 40).sum())


@contextmanager
def _viewer(server: str, errors: list[str]):
    """The viewer open in headless chromium with its scan loaded; page errors are appended to `errors`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            _wait_for(page, "document.body.dataset.scanLoaded", timeout=60_000)
            yield page
        finally:
            browser.close()


def _wait_for(page, expression: str, *, arg=None, timeout: float = 30_000) -> None:
    """Poll a JavaScript expression until it is truthy. Playwright's wait_for_function compiles its predicate
    with eval inside the page, which the viewer's Content-Security-Policy (script-src 'self') rightly forbids;
    page.evaluate goes through the DevTools protocol instead, so the page keeps its CSP during the test."""
    deadline = time.monotonic() + timeout / 1000.0
    while not page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def test_click_shows_organ_and_segment_overlays(server, tmp_path):
    volume = osc.load_volume(SCAN)
    errors: list[str] = []
    with _viewer(server, errors) as page:
        _wait_for(page, "document.getElementById('answer').dataset.seq == window.organscope.state.querySeq")

        # move the crosshair off the target within the same axial slice, then click the target in the axial tile
        pos = page.evaluate("""(mm) => {
            const nv = window.organscope.nv
            nv.scene.crosshairPos = nv.mm2frac([mm[0] + 40, mm[1] + 40, mm[2]])
            nv.drawScene()
            const hit = nv.frac2canvasPosWithTile(nv.mm2frac(mm), 0)  // 0 = axial
            const rect = nv.canvas.getBoundingClientRect()
            const dpr = nv.uiData.dpr || 1
            return { x: rect.left + hit.pos[0] / dpr, y: rect.top + hit.pos[1] / dpr,
                     canvas: [rect.left, rect.top, rect.right, rect.bottom] }
        }""", list(BRAINSTEM_MM))
        before_seq = page.evaluate("window.organscope.state.querySeq")
        page.mouse.click(pos["x"], pos["y"])
        _wait_for(
            page, f"window.organscope.state.querySeq > {before_seq} && "
            "document.getElementById('answer').dataset.seq == window.organscope.state.querySeq", timeout=30_000)

        mm = json.loads(page.get_attribute("#location-mm", "data-mm"))
        shown_name = page.text_content("#organ-name")
        shown_prob = page.text_content("#organ-probability")
        shown_organ = page.get_attribute("#answer", "data-organ")
        shown_vox = page.text_content("#location-vox")
        # NiiVue's own value at its crosshair: the same HU as organscope's voxel at those world mm, so
        # NiiVue's mm and organscope's world coordinates are one space (RAS mm of the scan's affine)
        niivue_value = page.evaluate("""(mm) => {
            const v = window.organscope.nv.volumes[0]; const vox = v.mm2vox(mm)
            return v.getValue(vox[0], vox[1], vox[2]) }""", mm)
        shot = tmp_path / "viewer_click.png"
        page.screenshot(path=str(shot))

        page.click("#segment-button")
        _wait_for(page, "document.body.dataset.segmented", timeout=120_000)
        page.wait_for_timeout(500)  # let NiiVue draw the overlay
        job_id = page.evaluate("document.body.dataset.segmented")
        legend = page.eval_on_selector_all("#legend li[data-organ]", "els => els.map(e => e.dataset.organ)")
        confidences = page.eval_on_selector_all("#legend li[data-organ]",
                                                "els => els.map(e => e.dataset.confidence)")
        cut_marks = page.eval_on_selector_all("#legend .cut-off", "els => els.length")
        left_out_notes = page.eval_on_selector_all("#legend .left-out", "els => els.length")
        engine_options = page.eval_on_selector_all("#engine-select option", "els => els.map(e => e.value)")
        chosen_engine = page.eval_on_selector("#engine-select", "e => e.value")
        status = page.text_content("#status")
        final = tmp_path / "viewer_segmented.png"
        page.screenshot(path=str(final))
        page.uncheck("#overlay-toggle")  # the overlay can be hidden again
        page.wait_for_timeout(300)
        hidden = tmp_path / "viewer_overlay_hidden.png"
        page.screenshot(path=str(hidden))
        page.check("#overlay-toggle")

        # uploading a scan from the page opens it and shows it (a second entry in the scan list)
        first_id = page.evaluate("document.body.dataset.scanLoaded")
        options_before = page.eval_on_selector_all("#scan-select option", "els => els.length")
        page.set_input_files("#upload-input", str(SCAN))
        _wait_for(page, "(first) => document.body.dataset.scanLoaded && "
                        "document.body.dataset.scanLoaded != first", arg=first_id, timeout=60_000)
        n_options = page.eval_on_selector_all("#scan-select option", "els => els.length")
        legend_after_upload = page.text_content("#legend")

    assert not errors, errors
    # the click landed where it was aimed (within one voxel) ...
    assert np.linalg.norm(np.subtract(mm, BRAINSTEM_MM)) < max(volume.spacing_mm), mm
    vox = np.rint(volume.world_to_voxel([mm])).astype(int).reshape(3)
    assert shown_vox == ", ".join(str(v) for v in vox)
    assert niivue_value == pytest.approx(float(volume.array[tuple(vox)]))
    # ... and the page shows what organscope.api.query says about that point
    expected = api.query(volume, [mm])
    name, prob = expected.names[0], float(expected.probability[0])
    assert name == "brainstem"
    assert shown_organ == name
    assert shown_name == get_organ(name).display_name
    assert shown_prob == f"{100 * prob:.1f} %"

    # the segmentation's organs are listed and its colours are drawn over the (grey) scan
    job = httpx.get(f"{server}/api/jobs/{job_id}").json()
    assert job["state"] == "done"
    assert legend == [o["name"] for o in job["organs_found"]] and "brainstem" in legend
    # the engine control lists the service's engines, its default chosen; the legend shows each confidence
    assert engine_options == [e["name"] for e in httpx.get(f"{server}/api/engines").json()]
    assert chosen_engine == job["engine"] == "ensemble"
    assert [float(c) for c in confidences] == pytest.approx([o["confidence"] for o in job["organs_found"]])
    assert "organ(s)" in status
    # nothing of the bundled scan is cut off by its border or left out by the anatomy check
    assert not any(o["cut_off"] for o in job["organs_found"]) and job["qc"]["dropped"] == []
    assert cut_marks == 0 and left_out_notes == 0
    box = tuple(int(v) for v in pos["canvas"])
    coloured = {name: _coloured_pixels(png, box) for name, png in
                (("click", shot), ("segmented", final), ("hidden", hidden))}
    assert coloured["segmented"] > coloured["click"] + 500, coloured
    assert coloured["hidden"] < coloured["click"] + 100, coloured
    assert n_options == options_before + 1 and "press Segment" in legend_after_upload

    out = REPO / "work"
    out.mkdir(exist_ok=True)
    shutil.copy(final, out / "viewer_screenshot.png")
    assert os.path.getsize(out / "viewer_screenshot.png") > 10_000


def _upload_and_segment(page, path: Path) -> dict:
    """Upload `path` from the page, press Segment, wait for its overlay; the legend as the page shows it and the
    service's job info."""
    scan_before = page.evaluate("document.body.dataset.scanLoaded || ''")
    job_before = page.evaluate("document.body.dataset.segmented || ''")
    page.set_input_files("#upload-input", str(path))
    _wait_for(page, "(before) => document.body.dataset.scanLoaded && document.body.dataset.scanLoaded != before && "
                    "!document.getElementById('segment-button').disabled", arg=scan_before, timeout=60_000)
    page.click("#segment-button")
    _wait_for(page, "(before) => document.body.dataset.segmented && document.body.dataset.segmented != before",
              arg=job_before, timeout=120_000)
    legend = page.eval_on_selector_all("#legend li", """els => els.map(e => ({
        organ: e.dataset.organ || null, cutOff: e.dataset.cutOff === 'true', text: e.textContent,
        marks: e.querySelectorAll('.cut-off').length, leftOut: e.dataset.leftOut || null }))""")
    return {"legend": legend, "status": page.text_content("#status"),
            "job": page.evaluate("window.organscope.state.job")}


def test_legend_marks_cut_off_and_left_out_organs(server, tmp_path):
    """The legend marks the organs the service says are cut off by the scan's border (the bundled scan cropped
    above the lower end of its spinal cord: the cord and oesophagus reach the border, the brainstem and parotids do
    not), and notes the organs the anatomy check left out, with the reason (a chest-like phantom: not head-and-neck
    CT, so every organ the engine finds is dropped)."""
    from organscope.io import save_volume
    from organscope.volume import Volume
    from helpers.torso import torso

    volume = osc.load_volume(SCAN)
    cropped = tmp_path / "cropped.nii.gz"  # axis 2 runs superior -> inferior: the affine's origin stays
    save_volume(Volume(np.ascontiguousarray(volume.array[:, :, :100]), volume.affine), cropped)
    chest = tmp_path / "chest.nii.gz"
    save_volume(torso(), chest)

    errors: list[str] = []
    with _viewer(server, errors) as page:
        cut = _upload_and_segment(page, cropped)
        page.screenshot(path=str(tmp_path / "viewer_cut_off.png"))
        left = _upload_and_segment(page, chest)
        page.screenshot(path=str(tmp_path / "viewer_left_out.png"))
    assert not errors, errors

    # cut off: marked exactly where the job info says so, and the crop makes both kinds
    job = cut["job"]
    cut_off = {o["name"]: o["cut_off"] for o in job["organs_found"]}
    assert cut_off == {n: n in job["qc"]["cut_off"] for n in cut_off}  # job info agrees with its own QC
    assert cut_off["spinal_cord"] is True and cut_off["brainstem"] is False, cut_off
    organs = [row for row in cut["legend"] if row["organ"]]
    assert [row["organ"] for row in organs] == list(cut_off)
    for row in organs:
        assert row["cutOff"] is cut_off[row["organ"]], row
        assert row["marks"] == int(cut_off[row["organ"]]), row
        assert ("cut off: volume not whole" in row["text"]) is cut_off[row["organ"]], row
    assert not any(row["leftOut"] for row in cut["legend"])

    # left out: every dropped organ named once, with the check's reason, and no organ listed as found
    job = left["job"]
    assert job["qc"]["in_region"] is False and job["qc"]["dropped"] and job["organs_found"] == []
    notes = [row for row in left["legend"] if row["leftOut"]]
    named = [n for row in notes for n in row["leftOut"].split(",")]
    assert sorted(named) == sorted(job["qc"]["dropped"])
    for row in notes:
        for n in row["leftOut"].split(","):
            assert get_organ(n).display_name in row["text"]
            assert job["qc"]["organs"][n]["reasons"][0] in row["text"]
    assert any("not head-and-neck CT" in row["text"] for row in notes)
    assert [row["text"] for row in left["legend"] if not row["leftOut"]] == ["no organ found"]
    assert f"{len(job['qc']['dropped'])} left out by the anatomy check" in left["status"]
