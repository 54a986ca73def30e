"""The heat-map localiser (Navarro et al., unified 3D localisation + segmentation): a 3D network regresses one
Gaussian heat-map per organ on a coarse grid; an organ's centroid is the mid-point of the region where its
heat-map exceeds tau (0.1 in the paper; below it everywhere, the organ is absent); its box is the training
set's mean organ extent around the centroid plus a margin (the paper's), or, where the card has them, half-extents
per organ and axis fitted on training cases with the trained network (`box_half_extent_mm`: they also cover its
centroid errors; `training.train_heatmap.fit_box_half_extents`).

The network reads 128^3 tiles (the card's `input_grid`) of the scan at the card's spacing in mm (`spacing_mm`),
padded with air to one tile or tiled with overlap (the heat-maps' maximum where tiles overlap), and averages its
output 2x2x2 down to the coarse grid (64^3 per tile; ~8x8x5 mm at the shipped spacing; the paper used 3 mm on
whole-body scans, a grid of similar size). A card without a spacing stretches the field of view onto its
`source_grid` (organ scale then follows the field of view).
"""
from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from .. import grid as gridmod
from ..engines.base import require_finite
from ..errors import ModelError
from ..geometry import scale_affine
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
        self.spacing_mm = self.card.spacing_mm
        self.windows_hu = self.card.windows_hu
        self._session = open_session(onnx_path, threads)

    def work_grid(self, volume: Volume, hu: np.ndarray | None = None,
                  smap: gridmod.SpacingMap | None = None) -> tuple[np.ndarray, gridmod.SpacingMap]:
        """HU on the work grid the network's tiles are cut from, and its map: the card's spacing padded with air
        to at least the input grid (or, for a card without a spacing, the field of view stretched onto
        source_grid). A caller's `hu`/`smap` are used when they are that grid (the cascade's: nothing is paid twice)."""
        if hu is not None and smap is not None and smap.spacing_mm == self.spacing_mm and (
                self.spacing_mm is None or smap.tile_shape == self.input_grid):
            return hu, smap
        require_finite(volume)
        if self.spacing_mm is None:
            return gridmod.to_spacing(volume, None, self.source_grid)
        return gridmod.to_spacing(volume, self.spacing_mm, self.input_grid)

    def heatmaps(self, volume: Volume, hu: np.ndarray | None = None,
                 gmap: gridmod.SpacingMap | None = None) -> tuple[np.ndarray, gridmod.SpacingMap]:
        """(organs, *coarse grid) heat-maps over the work grid (each tile's heat-maps, the maximum where tiles
        overlap) and the work grid's map (`gmap`: a caller's, see `work_grid`)."""
        hu, smap = self.work_grid(volume, hu, gmap)

        def run(tile: np.ndarray) -> np.ndarray:
            x = tile if tuple(tile.shape) == self.input_grid else gridmod.resample(tile, self.input_grid)
            heat = self._session.run(None, {"windows": windows(x, self.windows_hu)[None]})[0][0]
            if tuple(heat.shape[1:]) != self.grid:
                raise ModelError(f"The heat-map model outputs a {heat.shape[1:]} grid, its card says {self.grid}.")
            return heat

        if self.spacing_mm is None:
            return run(hu), smap
        return gridmod.run_tiled(hu, smap, run, reduce="max"), smap

    def locate(self, volume: Volume, *, timings: dict | None = None, hu: np.ndarray | None = None,
               gmap: gridmod.SpacingMap | None = None) -> dict[str, OrganLocation]:
        t0 = time.perf_counter()
        heat, smap = self.heatmaps(volume, hu, gmap)
        sizes = organ_sizes()
        canon_affine = smap.canonical_affine
        canon_sp = np.sqrt((canon_affine[:3, :3] ** 2).sum(0))
        canon_shape = np.array(smap.canonical_shape)
        # coarse voxel g covers work voxels [g*z, (g+1)*z): through world mm onto the canonical input grid
        coarse_affine = scale_affine(smap.affine, np.array(smap.shape) / np.array(heat.shape[1:]))
        to_canon = np.linalg.inv(canon_affine) @ coarse_affine
        out = {}
        for c, name in enumerate(self.organs):
            cen, peak = centroid_from_heatmap(heat[c], self.tau)
            conf = float(np.clip(peak, 0.0, 1.0))
            if cen is not None:
                cen_canon = to_canon[:3, :3] @ cen + to_canon[:3, 3]
                if np.any(cen_canon < -0.5) or np.any(cen_canon > canon_shape - 0.5):
                    cen = None  # found in the air padding, outside the scan
            if cen is None:
                out[name] = OrganLocation(name, False, confidence=conf)
                continue
            half_mm = self.box_half_mm.get(name)
            if half_mm is None:
                half_mm = np.array(sizes.get(name, {}).get("extent_mm", [40.0, 40.0, 40.0])) / 2 + self.margin_mm
            half = half_mm / canon_sp
            start = np.maximum(np.floor(cen_canon - half), 0).astype(int)
            stop = np.minimum(np.ceil(cen_canon + half) + 1, canon_shape).astype(int)
            out[name] = location(name, start, stop, cen_canon, conf, smap.canonical)
        if timings is not None:
            timings["total"] = time.perf_counter() - t0
        return out
