"""The cnn3d engine (COBRA, Henderson et al.): the whole scan on the card's fixed grid (128^3) through a tiny
factorised 3D U-Net in ONNX Runtime, per-class logit offsets from the card (fitted on training cases: they undo
the loss's over-segmentation), argmax, nearest upsampling back to the input's grid."""
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
        self.largest_component = self.card.largest_component
        self.logit_offsets = self.card.offsets_array()
        self._session = open_session(self.onnx_path, threads)
        self._input = self._session.get_inputs()[0].name

    def network_input(self, volume: Volume) -> tuple[np.ndarray, gridmod.GridMap]:
        """(1, channels, *grid) float32 windows of the scan on the fixed grid, and the map back to its grid."""
        require_finite(volume)
        hu, gmap = gridmod.to_grid(volume, self.grid)
        return windows(hu, self.card.windows_hu)[None], gmap

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        wanted = select_organs(self.classes[1:], organs, self.name)
        t0 = time.perf_counter()
        progress("resample to the network grid", 0.0)
        x, gmap = self.network_input(volume)
        timings = {"prepare": time.perf_counter() - t0}
        t = time.perf_counter()
        progress("3D CNN", 0.2)
        scores = self._session.run(None, {self._input: x})[0][0]
        timings["network"] = time.perf_counter() - t
        t = time.perf_counter()
        progress("labels back to the scan's grid", 0.9)
        n_out = len(self.classes)
        dtype = labels_dtype(n_out)
        if self.logit_offsets is not None:
            scores += self.logit_offsets
        cls = scores.argmax(axis=0)
        labels = np.where(cls >= N_BACKGROUND, cls - (N_BACKGROUND - 1), 0).astype(dtype)
        if self.largest_component:
            labels = largest_components(labels, n_out)
        out = gridmod.from_grid(labels, gmap, volume)
        names = {i: n for i, n in enumerate(self.classes) if i > 0}
        confidence = self._confidence(scores, labels, names, out)
        probs = self._probabilities(scores, gmap) if probabilities else None
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress("done", 1.0)
        seg = Segmentation(out, names, timings, confidence, probs)
        return seg if organs is None else seg.keep(wanted)

    @staticmethod
    def _confidence(scores: np.ndarray, labels: np.ndarray, names: dict[int, str], out: Volume) -> dict[str, float]:
        """Per organ, the mean softmax probability of the network class picked, over the organ's grid voxels
        (the softmax is taken at organ voxels only). An organ on the grid but on no voxel of a scan coarser than
        the grid (nearest neighbour skips grid voxels) is not present, so it gets none."""
        idx = np.flatnonzero(labels)
        flat = scores.reshape(len(scores), -1)[:, idx]
        picked = 1.0 / np.exp(flat - flat.max(axis=0)).sum(axis=0)  # the winner's softmax probability
        return present_on_output(organ_confidence(labels.ravel()[idx], picked, names), out, labels.shape, names)

    def _probabilities(self, scores: np.ndarray, gmap: gridmod.GridMap) -> ClassProbabilities:
        """Softmax of the (offset) network scores on the fixed grid, air and body summed into background, in
        the input's axis order."""
        e = np.exp(scores - scores.max(axis=0, keepdims=True))
        e /= e.sum(axis=0, keepdims=True)
        probs = np.concatenate([e[:N_BACKGROUND].sum(axis=0, keepdims=True), e[N_BACKGROUND:]])
        return probabilities_to_input(probs, gmap.grid_affine, gmap.canonical, self.classes)
