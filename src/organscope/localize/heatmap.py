"""The heat-map localiser (Navarro et al., unified 3D localisation + segmentation): a 3D network regresses one
Gaussian heat-map per organ on a coarse grid; an organ's centroid is the mid-point of the region where its
heat-map exceeds tau (0.1 in the paper; below it everywhere, the organ is absent); its box is the training
set's mean organ extent around the centroid plus a margin (the paper's), or, where the card has them, half-extents
per organ and axis fitted on training cases with the trained network (`box_half_extent_mm`: they also cover its
centroid errors; `training.train_heatmap.fit_box_half_extents`).

The coarse grid (the heat-maps') is the cnn3d fixed grid halved: 64^3 over the scan's field of view (OpenKBP:
7-10 mm in-plane, 4-6 mm between slices; the paper used 3 mm on whole-body scans, a grid of similar size). The
network reads the scan on the card's `input_grid` (the shipped one: the cnn3d 128^3 grid, whose segmentation
weights it starts from) and averages its output down to the coarse grid.
"""
from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from .. import grid as gridmod
from ..engines.base import require_finite
from ..errors import ModelError
from ..intensity import windows
from ..modelcard import model_paths, open_session
from ..volume import Volume
from .boxes import OrganLocation, location
from .heatmap_card import GRID, SIGMA2_MM2, SOURCE_GRID, TAU, HeatmapCard
from .organ_sizes import organ_sizes

DEFAULT_MODEL = "heatmap_openkbp"

__all__ = ["DEFAULT_MODEL", "GRID", "SIGMA2_MM2", "SOURCE_GRID", "TAU", "HeatmapCard", "HeatmapLocalizer",
           "centroid_from_heatmap", "gaussian_heatmap"]


def gaussian_heatmap(shape, affine: np.ndarray, centroid_mm: np.ndarray, sigma2_mm2: float = SIGMA2_MM2) -> np.ndarray:
    """exp(-|x - c|^2 / (2 sigma^2)) over the voxel centres of a grid, distances in world mm."""
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    lin = affine[:3, :3].astype(np.float32)
    off = (affine[:3, 3] - centroid_mm).astype(np.float32)
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    d = idx @ lin.T + off
    return np.exp(-(d ** 2).sum(-1) / (2 * sigma2_mm2)).astype(np.float32)


def centroid_from_heatmap(heat: np.ndarray, tau: float = TAU) -> tuple[np.ndarray | None, float]:
    """(mid-point of the region above tau, in grid voxels, or None if there is none; the heat-map's maximum).
    Of several regions, the one holding the maximum is used (robust to a false positive elsewhere)."""
    peak = float(heat.max())
    if peak < tau:
        return None, peak
    lab, n = ndimage.label(heat > tau)
    if n > 1:
        lab = lab == lab[np.unravel_index(int(np.argmax(heat)), heat.shape)]
    idx = np.argwhere(lab > 0)
    return (idx.min(0) + idx.max(0)) / 2.0, peak


class HeatmapLocalizer:
    def __init__(self, model=None, *, threads: int | None = None):
        onnx_path, card_path = model_paths(model, DEFAULT_MODEL, "heatmap")
        self.card = HeatmapCard.load(card_path)
        self.organs: tuple[str, ...] = self.card.organs
        self.grid = self.card.grid
        self.input_grid = self.card.network_grid
        self.tau = self.card.tau
        self.margin_mm = self.card.box_margin_mm
        self.box_half_mm = {o: np.asarray(v, float) for o, v in self.card.box_half_extent_mm}
        self.source_grid = self.card.source_grid
        self.windows_hu = self.card.windows_hu
        self._session = open_session(onnx_path, threads)

    def heatmaps(self, volume: Volume, hu: np.ndarray | None = None,
                 gmap: gridmod.GridMap | None = None) -> tuple[np.ndarray, gridmod.GridMap]:
        """(organs, *coarse grid) heat-maps and the map of the fine grid they came from. The scan goes to the
        cnn3d 128^3 grid first (or `hu`/`gmap` from a caller that has it) and from there to the network's input
        grid, as in training; a caller that already resampled the scan pays nothing more when the two agree."""
        if hu is None or gmap is None:
            require_finite(volume)
            hu, gmap = gridmod.to_grid(volume, self.source_grid)
        x = hu if tuple(hu.shape) == self.input_grid else gridmod.resample(hu, self.input_grid)
        heat = self._session.run(None, {"windows": windows(x, self.windows_hu)[None]})[0][0]
        if tuple(heat.shape[1:]) != self.grid:
            raise ModelError(f"The heat-map model outputs a {heat.shape[1:]} grid, its card says {self.grid}.")
        return heat, gmap

    def locate(self, volume: Volume, *, timings: dict | None = None, hu: np.ndarray | None = None,
               gmap: gridmod.GridMap | None = None) -> dict[str, OrganLocation]:
        t0 = time.perf_counter()
        heat, gmap = self.heatmaps(volume, hu, gmap)
        sizes = organ_sizes()
        canon_affine = gmap.canonical_affine
        canon_sp = np.sqrt((canon_affine[:3, :3] ** 2).sum(0))
        zoom = np.array(gmap.canonical_shape) / np.array(self.grid)  # coarse voxel g = canonical [g*z, (g+1)*z)
        out = {}
        for c, name in enumerate(self.organs):
            cen, peak = centroid_from_heatmap(heat[c], self.tau)
            conf = float(np.clip(peak, 0.0, 1.0))
            if cen is None:
                out[name] = OrganLocation(name, False, confidence=conf)
                continue
            cen_canon = (cen + 0.5) * zoom - 0.5
            half_mm = self.box_half_mm.get(name)
            if half_mm is None:
                half_mm = np.array(sizes.get(name, {}).get("extent_mm", [40.0, 40.0, 40.0])) / 2 + self.margin_mm
            half = half_mm / canon_sp
            start = np.maximum(np.floor(cen_canon - half), 0).astype(int)
            stop = np.minimum(np.ceil(cen_canon + half) + 1, gmap.canonical_shape).astype(int)
            out[name] = location(name, start, stop, cen_canon, conf, gmap.canonical)
        if timings is not None:
            timings["total"] = time.perf_counter() - t0
        return out
