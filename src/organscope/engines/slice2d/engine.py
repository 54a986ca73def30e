"""The slice2d engine (Salimi et al.): one small 2D Res-UNet per organ on axial slices of the body box, within
the organ's slice range; a user may ask for a subset of organs and only those models run.

The slice range comes from the sparse classifier's coarse grid (`engines.sparse.locate`, handed over by the registry), grown by a margin:
the paper crops training slices to the organ's range plus 30 slices, and at inference needs the range too.
Where two organs claim a voxel, the higher probability wins; each organ keeps its largest 3D component."""
from __future__ import annotations

import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ...body import body_crop
from ...components import largest_components
from ...errors import ModelError
from ...geometry import crop_affine, world_to_voxel
from ...modelcard import card_path, open_session
from ...segmentation import ClassProbabilities, Segmentation, labels_dtype
from ...volume import Volume
from ..base import (ProgressFn, no_progress, organ_confidence, probabilities_to_input, require_finite,
                    select_organs)
from . import preprocess
from .card import RANGE_MARGIN_MM, OrganSpec, Slice2dCard

__all__ = ["DEFAULT_MODEL", "RANGE_MARGIN_MM", "Slice2dCard", "Slice2dEngine"]

DEFAULT_MODEL = "slice2d_openkbp"


def card_path_for(name_or_path) -> Path:
    return card_path(name_or_path, DEFAULT_MODEL, "slice2d")


class Slice2dEngine:
    name = "slice2d"
    supports_organ_subset = True

    def __init__(self, model=None, *, threads: int | None = None, slice_range: str | None = None,
                 localizers=None):
        """slice_range: "sparse" (each organ's slices from the sparse classifier's coarse grid, the default) or
        "body" (every slice of the body box: no localiser, slower on long scans). localizers(name) -> an organ
        localiser (the engine registry passes its get_localizer: the sparse-grid localiser is another engine's)."""
        self.card_path = card_path_for(model)
        self.card = Slice2dCard.load(self.card_path)
        self.organ_cards: MappingProxyType[str, OrganSpec] = MappingProxyType({o.name: o for o in self.card.organs})
        self.input_size = self.card.input_size
        if self.input_size != preprocess.INPUT_SIZE:
            raise ModelError(f"Model card {self.card_path.name} wants slices of {self.input_size}, "
                             f"this organscope makes {preprocess.INPUT_SIZE}.")
        self.classes: tuple[str, ...] = ("background", *self.organ_cards)
        self.threads = threads
        self._localizers = localizers
        self._sessions: dict[str, object] = {}
        self._locator = None
        self.range_margin_mm = self.card.range_margin_mm
        self.largest_component = self.card.largest_component
        self.slice_range = slice_range or self.card.slice_range
        if self.slice_range not in ("sparse", "body"):
            raise ModelError(f"slice_range must be 'sparse' or 'body', not {self.slice_range!r}.")

    def _session(self, organ: str):
        if organ not in self._sessions:
            path = self.card_path.parent / self.organ_cards[organ].file
            self._sessions[organ] = open_session(path, self.threads)
        return self._sessions[organ]

    def select(self, organs) -> list[str]:
        """Canonical names of the requested organs, in the card's order; all when `organs` is None."""
        return select_organs(self.organ_cards, organs, self.name)

    def locate(self, volume: Volume):
        if self._locator is None:
            if self._localizers is None:
                raise ModelError("The slice2d engine needs an organ localiser for slice_range 'sparse': build it "
                                 "with organscope.engines.registry.get_engine('slice2d').")
            self._locator = self._localizers("sparse_grid")
        return self._locator.locate(volume)

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        chosen = self.select(organs)
        require_finite(volume)
        t0 = time.perf_counter()
        progress("body box and organ ranges", 0.0)
        canon, ornt = volume.to_canonical()
        crop = body_crop(canon)
        where = self.locate(volume) if self.slice_range == "sparse" else None
        timings = {"locate": time.perf_counter() - t0}
        dtype = labels_dtype(len(self.classes))
        labels = np.zeros(canon.shape, dtype=dtype)
        best = np.zeros(crop.size, dtype=np.float16)  # probability of the label written, inside the body box
        margin = int(np.ceil(self.range_margin_mm / canon.spacing_mm[2]))
        # per chosen organ its sigmoid probability in the body box (0 outside its slice range or if not found)
        organ_probs = np.zeros((1 + len(chosen), *crop.size), np.float32) if probabilities else None
        for n, organ in enumerate(chosen):
            t = time.perf_counter()
            progress(f"{organ}", 0.1 + 0.85 * n / max(1, len(chosen)))
            if where is None:
                z0, z1 = crop.start[2], crop.stop[2]
            else:
                loc = where.get(organ)
                if loc is None or not loc.present:
                    timings[organ] = time.perf_counter() - t
                    continue
                corners = world_to_voxel(canon.affine, np.array(loc.box_mm))
                z0 = int(np.floor(corners[:, 2].min())) - margin
                z1 = int(np.ceil(corners[:, 2].max())) + 1 + margin
            oc = crop.with_axis(2, max(z0, crop.start[2]), min(z1, crop.stop[2]))
            if oc.size[2] <= 0:
                continue
            x = preprocess.to_slices(canon.array[oc.slices], self.organ_cards[organ].window_hu)
            logits = self._session(organ).run(None, {"slices": x})[0][:, 0]
            prob = preprocess.from_slices(1.0 / (1.0 + np.exp(-logits)), oc.size)
            # place into the body-box frame, highest probability wins
            rel = tuple(slice(a - c, b - c) for a, b, c in zip(oc.start, oc.stop, crop.start))
            if organ_probs is not None:
                organ_probs[(1 + n, *rel)] = prob
            sub_best = best[rel]
            win = (prob > 0.5) & (prob > sub_best)
            sub_best[win] = prob[win]
            sub_lab = labels[crop.slices][rel]
            sub_lab[win] = self.classes.index(organ)
            timings[organ] = time.perf_counter() - t
        t = time.perf_counter()
        progress("clean-up", 0.97)
        if self.largest_component:
            labels = largest_components(labels, len(self.classes))
        out = volume.from_canonical(labels, ornt)
        names = {self.classes.index(o): o for o in chosen}
        in_box = labels[crop.slices].ravel()
        idx = np.flatnonzero(in_box)  # best holds the sigmoid probability of the organ written at each voxel
        confidence = organ_confidence(in_box[idx], best.ravel()[idx], names)
        probs = None if organ_probs is None else box_probabilities(organ_probs, crop, canon, volume, chosen)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress("done", 1.0)
        return Segmentation(out, names, timings, confidence, probs)


def box_probabilities(organ_probs: np.ndarray, crop, canon: Volume, volume: Volume, organs) -> ClassProbabilities:
    """The organs' sigmoid probabilities in the body box (organ_probs[1:], filled in place) as class
    probabilities: background = 1 - the highest organ probability (clipped), all divided by their sum, so the
    argmax is the organ with the highest probability where it passes 0.5 (the engine's rule), else background;
    on the box's grid of the canonical axes, returned in the input's axis order (outside the box: background)."""
    organ_probs[0] = np.clip(1.0 - organ_probs[1:].max(axis=0, initial=0.0), 0.0, 1.0)
    organ_probs /= np.maximum(organ_probs.sum(axis=0, keepdims=True), 1e-12)
    return probabilities_to_input(organ_probs, crop_affine(canon.affine, crop.start), volume.canonical(),
                                  ("background", *organs))
