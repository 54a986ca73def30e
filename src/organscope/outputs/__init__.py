"""Outputs that clinical software expects, from a Segmentation and its CT: arrays in, files at the edges.

    write_dicom_seg(seg, ct, path)     DICOM-SEG (highdicom) referencing the source DICOM series
    read_dicom_seg(path, ct)           ... and back, as a label map on the series' grid
    write_rtstruct(seg, ct, path)      DICOM RT Structure Set (pydicom): TG-263 ROI names, closed planar contours
    organ_statistics(ct, seg)          volume (ml), mean/sd HU, centroid (RAS mm), voxel count per organ
    write_statistics(ct, seg, path)    ... as JSON
    render_preview(ct, seg, path)      PNG: three orthogonal views with the label overlay and a legend
    write_masks(seg, folder)           one NIfTI mask per organ
    write_outputs(ct, seg, targets)    whichever of the above (and the label map) `targets` asks for

Every file is written atomically (temp file + rename): it is complete or absent.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..segmentation import Segmentation
from ..volume import Volume

__all__ = ["OutputPaths", "write_outputs", "write_dicom_seg", "read_dicom_seg", "write_rtstruct", "organ_statistics",
           "write_statistics", "render_preview", "write_masks"]


@dataclass(frozen=True)
class OutputPaths:
    """Where each output goes; None = not wanted."""

    labels: Path | None = None
    statistics: Path | None = None
    preview: Path | None = None
    dicom_seg: Path | None = None
    masks: Path | None = None
    rtstruct: Path | None = None

    def wanted(self) -> dict[str, Path]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def write_outputs(ct: Volume, seg: Segmentation, targets: OutputPaths, *, engine: str = "sparse",
                  model: str | None = None) -> list[Path]:
    """Write the outputs `targets` names (label map first); returns the paths written."""
    written: list[Path] = []
    if targets.labels is not None:
        from ..io import save_labels  # what api.save_segmentation does (outputs must not import the api)

        save_labels(seg.labels, seg.labels.array, targets.labels, {0: "background", **seg.names},
                    sidecar_extra(seg, engine=engine, model=model))
        written.append(targets.labels)
    if targets.statistics is not None:
        write_statistics(ct, seg, targets.statistics)
        written.append(targets.statistics)
    if targets.preview is not None:
        render_preview(ct, seg, targets.preview)
        written.append(targets.preview)
    if targets.dicom_seg is not None:
        write_dicom_seg(seg, ct, targets.dicom_seg, engine=engine)
        written.append(targets.dicom_seg)
    if targets.masks is not None:
        write_masks(seg, targets.masks)
        written.append(targets.masks)
    if targets.rtstruct is not None:
        write_rtstruct(seg, ct, targets.rtstruct, engine=engine, model=model)
        written.append(targets.rtstruct)
    return written


def sidecar_extra(seg: Segmentation, *, engine: str | None = None, model: str | None = None) -> dict:
    """What the label map's .json carries beside the names: the engine (and model, when one was named) that made
    it, where known, each organ's confidence (mean probability), the organs touching the scan's border
    ("cut_off": their volumes are not whole) and the anatomy check (`organscope.qc`): the scan's region and every
    organ found, kept or left out, with the reasons."""
    qc = getattr(seg, "qc", None)
    out: dict = {"engine": engine} if engine is not None else {}
    if model is not None:
        out["model"] = str(model)
    out["confidence"] = {n: round(float(c), 4) for n, c in seg.confidence.items()}
    if qc is not None:
        out["cut_off"] = qc.cut_off()
        out["qc"] = qc.to_dict()
    return out


def write_dicom_seg(seg, ct, path, *, engine: str = "sparse") -> int:
    from .dicom_seg import write_dicom_seg as _write

    return _write(seg, ct, path, engine=engine)


def write_rtstruct(seg, ct, path, *, engine: str = "sparse", model: str | None = None) -> int:
    from .rtstruct import write_rtstruct as _write

    return _write(seg, ct, path, engine=engine, model=model)


def read_dicom_seg(path, ct) -> Segmentation:
    from .dicom_seg import read_dicom_seg as _read

    return _read(path, ct)


def organ_statistics(ct, seg):
    from .statistics import organ_statistics as _stats

    return _stats(ct, seg)


def write_statistics(ct, seg, path) -> dict:
    from .statistics import write_statistics as _write

    return _write(ct, seg, path)


def render_preview(ct, seg, path, **kw) -> list[str]:
    from .preview import render_preview as _render

    return _render(ct, seg, path, **kw)


def write_masks(seg, folder) -> list[Path]:
    from .masks import write_masks as _write

    return _write(seg, folder)
