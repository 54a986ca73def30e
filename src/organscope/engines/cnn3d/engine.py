"""The cnn3d engine (COBRA, Henderson et al.): the whole scan on a fixed 128^3 grid through a tiny factorised
3D U-Net in ONNX Runtime, per-class logit offsets from the card (fitted on training cases: they undo the
loss's over-segmentation), argmax, nearest upsampling back to the input's grid."""
from __future__ import annotations

import json
import time

import numpy as np

from ...errors import ModelError
from ...volume import Volume
from ..onnx_models import MODELS_DIR, logit_offsets, model_paths, open_session  # noqa: F401 (MODELS_DIR: re-exported)
from ..base import ProgressFn, Segmentation, labels_dtype, no_progress, require_finite
from ..sparse.refine import largest_components
from . import preprocess

DEFAULT_MODEL = "cnn3d_openkbp"
N_BACKGROUND = 2  # the network's classes 0 (air) and 1 (body) are both background in the output


class Cnn3dEngine:
    name = "cnn3d"

    def __init__(self, model=None, *, threads: int | None = None):
        self.onnx_path, card_path = model_paths(model, DEFAULT_MODEL, "cnn3d")
        try:
            self.card = json.loads(card_path.read_text())
            self.classes: tuple[str, ...] = tuple(self.card["classes"])
            self.grid = tuple(int(v) for v in self.card["grid"])
            self.largest_component = bool(self.card.get("largest_component", False))
            n_network = len(self.card.get("network_classes", ())) or len(self.classes) + N_BACKGROUND - 1
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"Model card {card_path.name} is missing or malformed ({exc!r}).") from None
        self.logit_offsets = logit_offsets(self.card, n_network, card_path.name)
        self._session = open_session(self.onnx_path, threads)
        self._input = self._session.get_inputs()[0].name

    def network_input(self, volume: Volume) -> tuple[np.ndarray, preprocess.GridMap]:
        """(1, 2, *grid) float32 windows of the scan on the fixed grid, and the map back to its grid."""
        require_finite(volume)
        hu, gmap = preprocess.to_grid(volume, self.grid)
        return preprocess.windows(hu)[None], gmap

    def segment(self, volume: Volume, *, progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
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
        out = preprocess.from_grid(labels, gmap, volume)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress("done", 1.0)
        return Segmentation(out, {i: n for i, n in enumerate(self.classes) if i > 0}, timings)
