"""Clinic export folders (CT slices + RTSTRUCT + RTPLAN + RTDOSE in one folder): which series is the scan."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from organscope.cli import main
from organscope.errors import DicomSeriesError
from organscope.io import load_volume
from organscope.io.dicom import find_series

from helpers.dicom_rt import make_ct_series, make_rtdose, make_rtplan, make_rtstruct, phantom_ct


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def clinic_folder(folder: Path) -> dict:
    uids = make_ct_series(folder, phantom_ct())
    make_rtplan(folder / "RP.plan.dcm", uids)
    make_rtdose(folder / "RD.dose.dcm", uids)
    make_rtstruct(folder / "RS.struct.dcm", uids, sorted(folder.glob("ct*.dcm")), [])
    (folder / "notes.txt").write_text("not DICOM")
    return uids


def test_one_ct_plus_rt_objects_gives_the_ct(tmp_path):
    uids = clinic_folder(tmp_path / "export")
    assert {s.modality for s in find_series(tmp_path / "export")} == {"CT", "RTDOSE"}
    ct = load_volume(tmp_path / "export")
    assert ct.shape == (32, 32, 8) and ct.meta["series_uid"] == uids["series_uid"]
    # an RTSTRUCT file stands for the CT series it refers to
    assert load_volume(tmp_path / "export" / "RS.struct.dcm").meta["series_uid"] == uids["series_uid"]


def test_two_ct_series_the_rtstruct_decides(tmp_path):
    folder = tmp_path / "export"
    a = make_ct_series(folder, phantom_ct(), description="planning CT", prefix="a")
    b = make_ct_series(folder, phantom_ct((32, 32, 6)), description="4D average", prefix="b",
                       study_uid=a["study_uid"])
    make_rtdose(folder / "RD.dcm", a)
    make_rtstruct(folder / "RS.dcm", b, sorted(folder.glob("b*.dcm")), [])
    assert load_volume(folder).meta["series_uid"] == b["series_uid"]
    assert load_volume(folder, series_uid=a["series_uid"]).shape == (32, 32, 8)


def test_two_ct_series_without_rtstruct_is_one_sentence_listing_them(tmp_path, capsys):
    folder = tmp_path / "export"
    a = make_ct_series(folder, phantom_ct(), description="planning CT", prefix="a")
    b = make_ct_series(folder, phantom_ct((32, 32, 6)), description="", prefix="b")
    make_rtplan(folder / "RP.dcm", a)
    with pytest.raises(DicomSeriesError) as exc:
        load_volume(folder)
    msg = one_line(exc)
    assert "holds 2 DICOM series" in msg and "--series-uid" in msg
    assert f"'planning CT' (CT, 8 slices, UID {a['series_uid']})" in msg
    assert f"no description (CT, 6 slices, UID {b['series_uid']})" in msg
    assert "RTDOSE" not in msg and "RTPLAN" not in msg
    # the CLI: one stderr line, exit 2, no output; --series-uid chooses
    out = tmp_path / "out.nii.gz"
    assert main(["segment", "-i", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--series-uid" in err[0] and not out.exists()


def test_cli_series_uid_option_reaches_load_volume(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    make_ct_series(folder, phantom_ct(), prefix="a")
    b = make_ct_series(folder, phantom_ct((32, 32, 6)), prefix="b")
    seen = {}

    def fake_segment(ct, options, **kw):
        seen["shape"] = ct.shape
        raise DicomSeriesError("stop here.")

    from organscope import pipeline

    monkeypatch.setattr(pipeline, "segment_volume", fake_segment)
    assert main(["segment", "-i", str(folder), "-o", str(tmp_path / "o.nii.gz"),
                 "--series-uid", b["series_uid"]]) == 2
    assert seen["shape"] == (32, 32, 6)


def test_only_rt_objects_is_a_clear_error(tmp_path):
    folder = tmp_path / "dose_only"
    folder.mkdir()
    make_rtdose(folder / "RD.dcm", {"study_uid": "1.2.3", "for_uid": "1.2.4"})
    with pytest.raises(DicomSeriesError, match="holds no CT slices") as exc:
        load_volume(folder)
    one_line(exc)


def test_series_picked_is_independent_of_file_names(tmp_path):
    folder = tmp_path / "export"
    clinic_folder(folder)
    for f in list(folder.glob("ct*.dcm")):
        shutil.move(f, folder / f"zz_{f.name}")
    assert np.asarray(load_volume(folder).array).shape == (32, 32, 8)
