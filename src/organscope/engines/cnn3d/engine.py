"""The cnn3d engine (COBRA, Henderson et al.): the whole scan at the card's spacing in mm (`spacing_mm`), padded
with air to the card's grid (128^3) or tiled by it with overlap, through a tiny factorised 3D U-Net in ONNX
Runtime, per-class logit offsets from the card (fitted on training cases: they undo the loss's
over-segmentation), softmax (averaged where tiles overlap), argmax, nearest neighbour back to the input's grid.
A card without a spacing stretches the whole field of view onto the grid (organ scale then follows it)."""
from __future__ import annotations

import time

import numpy as np

from ... import grid as gridmod
from ...components import largest_components
from ...intensity import windows
from ...modelcard import model_paths, open_session
from ...segmentation import ClassProbabilities, Segmentation, labels_dtype
from ...volume import Volume
from ..base import (ProgressFn, no_progress, organ_confidence, present_on_output, probabilities_to_input,
                    require_finite, select_organs)
from .card import N_BACKGROUND, Cnn3dCard

__all__ = ["Cnn3dCard", "Cnn3dEngine", "DEFAULT_MODEL", "N_BACKGROUND"]

DEFAULT_MODEL = "cnn3d_openkbp"


class Cnn3dEngine:
    name = "cnn3d"

    def __init__(self, model=None, *, threads: int | None = None):
        self.onnx_path, card_path = model_paths(model, DEFAULT_MODEL, "cnn3d")
        self.card = Cnn3dCard.load(card_path)
        self.classes: tuple[str, ...] = self.card.classes
        self.grid = self.card.grid
        self.spacing_mm = self.card.spacing_mm
        self.largest_component = self.card.largest_component
        self.logit_offsets = self.card.offsets_array()
        self._session = open_session(self.onnx_path, threads)
        self._input = self._session.get_inputs()[0].name

    def network_input(self, volume: Volume) -> tuple[np.ndarray, gridmod.SpacingMap]:
        """(1, channels, *work grid) float32 windows of the scan at the card's spacing (padded with air to at least
        the grid), and the map back to its grid."""
        require_finite(volume)
        hu, smap = gridmod.to_spacing(volume, self.spacing_mm, self.grid)
        return windows(hu, self.card.windows_hu)[None], smap

    def network_probabilities(self, x: np.ndarray, smap: gridmod.SpacingMap) -> np.ndarray:
        """Softmax (network classes, *work grid) of the offset scores, tile by tile, averaged where tiles overlap."""
        def run(tile: np.ndarray) -> np.ndarray:
            scores = self._session.run(None, {self._input: tile})[0][0]
            if self.logit_offsets is not None:
                scores += self.logit_offsets
            return _softmax(scores)

        return gridmod.run_tiled(x, smap, run, whole_voxels=4 * int(np.prod(self.grid)))

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        wanted = select_organs(self.classes[1:], organs, self.name)
        t0 = time.perf_counter()
        progress("resample to the network's spacing", 0.0)
        x, smap = self.network_input(volume)
        timings = {"prepare": time.perf_counter() - t0}
        t = time.perf_counter()
        progress("3D CNN", 0.2)
        prob = np.ascontiguousarray(smap.crop_inner(self.network_probabilities(x, smap)))
        timings["network"] = time.perf_counter() - t
        t = time.perf_counter()
        progress("labels back to the scan's grid", 0.9)
        n_out = len(self.classes)
        dtype = labels_dtype(n_out)
        cls = prob.argmax(axis=0)
        labels = np.where(cls >= N_BACKGROUND, cls - (N_BACKGROUND - 1), 0).astype(dtype)
        if self.largest_component:
            labels = largest_components(labels, n_out)
        out = gridmod.from_grid(labels, smap.inner, volume)
        names = {i: n for i, n in enumerate(self.classes) if i > 0}
        confidence = self._confidence(prob, labels, names, out)
        probs = self._probabilities(prob, smap.inner) if probabilities else None
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress("done", 1.0)
        seg = Segmentation(out, names, timings, confidence, probs)
        return seg if organs is None else seg.keep(wanted)

    def class_probabilities(self, volume: Volume, *,
                            progress: ProgressFn | None = None) -> ClassProbabilities:
        """What segment(probabilities=True) returns as its probabilities, without building the label map (the
        ensemble fuses these)."""
        progress = progress or no_progress
        progress("resample to the network's spacing", 0.0)
        x, smap = self.network_input(volume)
        progress("3D CNN", 0.2)
        prob = np.ascontiguousarray(smap.crop_inner(self.network_probabilities(x, smap)))
        probs = self._probabilities(prob, smap.inner)
        progress("done", 1.0)
        return probs

    @staticmethod
    def _confidence(prob: np.ndarray, labels: np.ndarray, names: dict[int, str], out: Volume) -> dict[str, float]:
        """Per organ, the mean softmax probability of the network class picked, over the organ's grid voxels.
        An organ on the grid but on no voxel of a scan coarser than the grid (nearest neighbour skips grid
        voxels) is not present, so it gets none."""
        idx = np.flatnonzero(labels)
        picked = prob.reshape(len(prob), -1)[:, idx].max(axis=0)  # the winner's softmax probability
        return present_on_output(organ_confidence(labels.ravel()[idx], picked, names), out, labels.shape, names)

    def _probabilities(self, e: np.ndarray, gmap: gridmod.GridMap) -> ClassProbabilities:
        """Softmax of the (offset) network scores on the scan's part of the work grid, air and body summed into
        background, in the input's axis order."""
        probs = np.concatenate([e[:N_BACKGROUND].sum(axis=0, keepdims=True), e[N_BACKGROUND:]])
        return probabilities_to_input(probs, gmap.grid_affine, gmap.canonical, self.classes)


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    e /= e.sum(axis=0, keepdims=True)
    return e
