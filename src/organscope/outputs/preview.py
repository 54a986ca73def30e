"""A PNG preview: axial, coronal and sagittal views with the label overlay in organ colours and a legend.

Views are cut from the RAS+ (canonical) version of the scan through the centroid of all labelled voxels
(or the volume's centre when nothing is labelled) and drawn in millimetres, so the aspect ratio follows
the voxel spacing. Radiological convention: the patient's right is on the image's left (axial and
coronal), anterior is on the left of the sagittal view. matplotlib with the Agg canvas only (no pyplot,
no display needed). The legend names are also stored in the PNG's "Description" text chunk.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..segmentation import Segmentation
from ..volume import Volume
from ._common import check_same_grid, organ_display

#: CT window (HU) of the grey background: a soft-tissue window, level 40, width 400.
WINDOW_HU = (-160.0, 240.0)
OVERLAY_ALPHA = 0.5


def _views(ct: Volume, labels: np.ndarray):
    """(title, grey 2D, label 2D, (width_mm, height_mm), flip_x) for the three views, rows = display up."""
    canon, ornt = ct.to_canonical()
    from .. import geometry

    lab, _ = geometry.apply_orientation(labels, ct.affine, ornt)
    img = canon.array
    sx, sy, sz = (float(s) for s in canon.spacing_mm)
    nz = np.argwhere(lab > 0)
    centre = nz.mean(axis=0) if nz.size else (np.array(img.shape) - 1) / 2.0
    i, j, k = (int(round(c)) for c in centre)
    nx, ny, nzs = img.shape
    # transpose so that array rows run along the vertical display axis (origin='lower' puts row 0 at the bottom)
    return [
        ("axial", img[:, :, k].T, lab[:, :, k].T, (nx * sx, ny * sy), True),
        ("coronal", img[:, j, :].T, lab[:, j, :].T, (nx * sx, nzs * sz), True),
        ("sagittal", img[i, :, :].T, lab[i, :, :].T, (ny * sy, nzs * sz), True),
    ], canon.voxel_to_world([[i, j, k]])[0]


def render_preview(ct: Volume, seg: Segmentation, path: str | os.PathLike, *,
                   size_px: tuple[int, int] = (1500, 560), dpi: int = 100) -> list[str]:
    """Atomically write the preview PNG of `seg` over `ct`; returns the legend entries (organ display names)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ..io import atomic_paths
    from ..io._common import wrap_write_error

    check_same_grid(seg.labels, ct)
    labels = np.asarray(seg.labels.array)
    present = [int(v) for v in np.unique(labels) if v > 0]
    lut = np.zeros((int(labels.max()) + 1, 4), dtype=np.float32)
    legend = []
    for v in present:
        display, rgb = organ_display(seg.names.get(v, f"label {v}"))
        lut[v] = [c / 255.0 for c in rgb] + [OVERLAY_ALPHA]
        legend.append((display, rgb))
    views, point = _views(ct, labels)

    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    widths = [w for _, _, _, (w, _), _ in views]
    grid = fig.add_gridspec(1, 4, width_ratios=widths + [0.45 * max(widths)], left=0.01, right=0.99,
                            bottom=0.03, top=0.92, wspace=0.04)
    for col, (title, grey, lab, (w_mm, h_mm), flip) in enumerate(views):
        ax = fig.add_subplot(grid[0, col])
        extent = (0.0, w_mm, 0.0, h_mm)
        ax.imshow(grey, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], origin="lower", extent=extent,
                  interpolation="nearest", aspect="equal")
        ax.imshow(lut[lab], origin="lower", extent=extent, interpolation="nearest", aspect="equal")
        if flip:  # the last column (patient's right / anterior) on the left of the view
            ax.set_xlim(w_mm, 0.0)
        ax.set_title(title, color="white", fontsize=11)
        ax.set_axis_off()
    lax = fig.add_subplot(grid[0, 3])
    lax.set_axis_off()
    handles = [Patch(facecolor=[c / 255.0 for c in rgb], edgecolor="none", label=name) for name, rgb in legend]
    if handles:
        ncol = 1 if len(handles) <= 24 else 2 if len(handles) <= 48 else 3
        lax.legend(handles=handles, loc="center left", frameon=False, labelcolor="white", ncol=ncol,
                   fontsize=10 if len(handles) <= 24 else 7, handlelength=1.2, borderaxespad=0.0)
    else:
        lax.text(0.0, 0.5, "no organ found", color="white", fontsize=11, va="center")
    fig.suptitle(f"organscope   through RAS ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm",
                 color="white", fontsize=10, x=0.01, ha="left")
    names = [name for name, _ in legend]
    try:
        with atomic_paths(path) as (tmp,):
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="black",
                        metadata={"Description": json.dumps({"legend": names}), "Software": "organscope"})
    except OSError as e:
        raise wrap_write_error(e, path) from None
    return names
