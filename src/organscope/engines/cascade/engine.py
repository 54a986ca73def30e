"""The cascade engine (Navarro et al.'s localise-then-segment, Zhang et al.'s coarse-to-fine cascade):

1. the scan at the card's spacing in mm on the canonical RAS+ axes (`spacing_mm`), padded with air to at least
   the card's grid (128^3), whatever its field of view (a card without a spacing: the field of view stretched
   onto the grid);
2. organ boxes from a localiser: the sparse classifier's 8 mm grid (`engines.sparse.locate`, handed over by the registry) or the heat-map
   network (`localize.heatmap`), whichever the model card names (the one that measured better);
3. per group of neighbouring organs (`groups.GROUPS`) with at least one organ found: a crop around the union of
   the group's boxes through the group's compact residual 3D U-Net (ONNX), the card's logit offsets (fitted
   on training crops; they undo the loss's over-segmentation), softmax;
4. the crops merged on the grid, the highest probability winning where two groups claim a voxel; an organ the
   localiser reports absent stays absent;
5. the largest connected component per organ, nearest neighbour back to the input's grid and orientation.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ... import grid as gridmod
from ...components import largest_components
from ...errors import ModelError
from ...geometry import world_to_voxel
from ...intensity import windows
from ...modelcard import card_path, open_session
from ...organs import lateral_twin
from ...segmentation import ClassProbabilities, Segmentation, labels_dtype
from ...volume import Volume
from ..base import (ProgressFn, no_progress, organ_confidence, present_on_output, probabilities_to_input,
                    require_finite, select_organs)
from .card import LOCALIZERS, N_BACKGROUND, CascadeCard, GroupSpec
from .groups import crop_window, extract, overlap

__all__ = ["CascadeCard", "CascadeEngine", "DEFAULT_MODEL", "GroupSpec", "LOCALIZERS", "N_BACKGROUND"]

DEFAULT_MODEL = "cascade_openkbp"


def card_path_for(name_or_path) -> Path:
    return card_path(name_or_path, DEFAULT_MODEL, "cascade")


class CascadeEngine:
    name = "cascade"
    supports_organ_subset = True

    def __init__(self, model=None, *, threads: int | None = None, localizer: str | None = None, localizers=None):
        """localizers(name, model=...) -> an organ localiser (the engine registry passes its get_localizer; the
        cascade never builds one itself, since the sparse-grid localiser is another engine's)."""
        self.card_path = card_path_for(model)
        self.card = CascadeCard.load(self.card_path)
        self.groups: MappingProxyType[str, GroupSpec] = MappingProxyType({g.name: g for g in self.card.groups})
        self.grid = self.card.grid
        self.spacing_mm = self.card.spacing_mm
        self.windows_hu = self.card.windows_hu
        self.classes: tuple[str, ...] = self.card.label_classes
        self.class_id = {o: i for i, o in enumerate(self.classes)}
        self._offsets = {gname: g.offsets_array() for gname, g in self.groups.items()}
        self.margin_vox = self.card.margin_vox
        self.largest_component = self.card.largest_component
        self.mirror = self.card.mirror_tta
        self._mirror_perm = {gname: mirror_permutation(g.organs) for gname, g in self.groups.items()}
        self.localizer = localizer or self.card.localizer
        if self.localizer not in LOCALIZERS:
            raise ModelError(f"The cascade localiser must be one of {', '.join(LOCALIZERS)}, not {self.localizer!r}.")
        self.threads = threads
        self._localizers = localizers
        self._sessions: dict[str, object] = {}
        self._locator = None

    def _session(self, group: str):
        if group not in self._sessions:
            self._sessions[group] = open_session(self.card_path.parent / self.groups[group].file, self.threads)
        return self._sessions[group]

    def select(self, organs) -> list[str]:
        """Canonical names of the requested organs in the card's order (all when `organs` is None)."""
        return select_organs(self.classes[1:], organs, self.name)

    def work_grid(self, volume: Volume) -> tuple[np.ndarray, gridmod.SpacingMap]:
        """HU on the work grid (the card's spacing, padded with air to at least the grid) and its map."""
        require_finite(volume)
        return gridmod.to_spacing(volume, self.spacing_mm, self.grid)

    def locate(self, volume: Volume, hu: np.ndarray, gmap: gridmod.SpacingMap, timings: dict | None = None):
        """Per organ OrganLocation from the card's localiser."""
        if self._locator is None:
            if self._localizers is None:
                raise ModelError("The cascade engine needs an organ localiser: build it with "
                                 "organscope.engines.registry.get_engine('cascade').")
            model = self.card.heatmap_model if self.localizer == "heatmap" else None
            if model is not None and model.endswith(".onnx") and not Path(model).is_absolute():
                model = self.card_path.parent / model  # beside the card, as the group networks
            self._locator = self._localizers(self.localizer, model=model)
        return self._locator.locate(volume, hu=hu, gmap=gmap, timings=timings)

    def group_boxes(self, locations, gmap: gridmod.SpacingMap, organs) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        """Per group with a wanted organ found: (its found organs, crop start, crop size) on the work grid."""
        out = {}
        for gname, g in self.groups.items():
            found = [o for o in g.organs if o in organs and locations.get(o) is not None and locations[o].present]
            if not found:
                continue
            pts = []
            for o in found:
                (x0, y0, z0), (x1, y1, z1) = locations[o].box_mm
                pts += [(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)]
            vox = world_to_voxel(gmap.affine, np.array(pts, float))
            lo, hi = np.floor(vox.min(0)), np.ceil(vox.max(0))
            start, size = crop_window(lo, hi, g.crop, self.margin_vox, limit=gmap.shape)
            out[gname] = (found, start, size)
        return out

    def group_probabilities(self, group: str, x: np.ndarray) -> np.ndarray:
        """Softmax (classes, *crop) of a group network on windows x (2, *crop), after the card's logit offsets
        for the group (if any); with mirror_tta, averaged with its run on the left-right mirrored crop (mirrored
        back, left and right organs swapped)."""
        sess = self._session(group)
        off = self._offsets[group]

        def run(windows: np.ndarray) -> np.ndarray:
            logits = sess.run(None, {"windows": windows[None]})[0][0]
            return _softmax(logits if off is None else logits + off)

        prob = run(x)
        if self.mirror:  # axis 0 of the canonical RAS+ grid is the left-right axis
            prob_m = run(np.ascontiguousarray(x[:, ::-1]))[:, ::-1]
            prob = 0.5 * (prob + prob_m[self._mirror_perm[group]])
        return prob

    def segment(self, volume: Volume, *, organs=None, probabilities: bool = False,
                progress: ProgressFn | None = None) -> Segmentation:
        progress = progress or no_progress
        wanted = self.select(organs)
        t0 = time.perf_counter()
        gmap, labels, best, organ_probs, timings = self._groups(volume, wanted, True, probabilities, progress)
        t = time.perf_counter()
        progress("labels back to the scan's grid", 0.9)
        labels = np.ascontiguousarray(gmap.crop_inner(labels))  # the scan's part of the work grid
        best = gmap.crop_inner(best)
        if self.largest_component:
            labels = largest_components(labels, len(self.classes))
        out = gridmod.from_grid(labels, gmap.inner, volume)
        names = {self.class_id[o]: o for o in wanted}
        idx = np.flatnonzero(labels)  # best holds the probability of the label written at each organ voxel
        confidence = present_on_output(organ_confidence(labels.ravel()[idx], best.ravel()[idx], names), out,
                                       labels.shape, names)
        probs = None
        if organ_probs is not None:
            probs = self._class_probabilities(organ_probs, gmap)
            if organs is not None:
                probs = probs.keep(wanted)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        progress("done", 1.0)
        return Segmentation(out, names, timings, confidence, probs)

    def class_probabilities(self, volume: Volume, *,
                            progress: ProgressFn | None = None) -> ClassProbabilities:
        """What segment(probabilities=True) returns as its probabilities, without building the label map (the
        ensemble fuses these)."""
        progress = progress or no_progress
        gmap, _, _, organ_probs, _ = self._groups(volume, self.select(None), False, True, progress)
        progress("done", 1.0)
        return self._class_probabilities(organ_probs, gmap)

    def _groups(self, volume: Volume, wanted, labels: bool, probabilities: bool, progress: ProgressFn):
        """Steps 1-4 on the work grid: (grid map, labels and the probability of each label written, per-class
        organ probabilities, timings); the labels (with their probabilities) or the per-class array are None
        when not asked for."""
        t0 = time.perf_counter()
        progress("resample to the card's spacing", 0.0)
        hu, gmap = self.work_grid(volume)
        timings = {"prepare": time.perf_counter() - t0}
        t = time.perf_counter()
        progress(f"locate organs ({self.localizer})", 0.2)
        locations = self.locate(volume, hu, gmap)
        timings["locate"] = time.perf_counter() - t
        crops = self.group_boxes(locations, gmap, wanted)
        best = np.zeros(gmap.shape, np.float32) if labels else None
        label_map = np.zeros(gmap.shape, labels_dtype(len(self.classes))) if labels else None
        organ_probs = np.zeros((len(self.classes), *gmap.shape), np.float32) if probabilities else None
        for n, (gname, (found, start, size)) in enumerate(crops.items()):
            t = time.perf_counter()
            progress(f"segment {gname}", 0.4 + 0.5 * n / max(1, len(crops)))
            prob = self.group_probabilities(gname, windows(extract(hu, start, size), self.windows_hu))
            members = [self.class_id[o] if o in found else 0 for o in self.groups[gname].organs]
            if label_map is not None:
                merge_crop(best, label_map, prob, start, members)
            if organ_probs is not None:
                merge_probabilities(organ_probs, prob, start, members)
            timings[f"group_{gname}"] = time.perf_counter() - t
        return gmap, label_map, best, organ_probs, timings

    def _class_probabilities(self, organ_probs: np.ndarray, gmap: gridmod.SpacingMap) -> ClassProbabilities:
        """The merged organ probabilities (filled in place: background = 1 - the organs) on the scan's part of
        the work grid, in the input's axis order."""
        organ_probs[0] = np.clip(1.0 - organ_probs[1:].sum(axis=0), 0.0, 1.0)
        return probabilities_to_input(np.ascontiguousarray(gmap.crop_inner(organ_probs)),
                                      gmap.inner.grid_affine, gmap.canonical, self.classes)


def merge_probabilities(organ_probs: np.ndarray, prob: np.ndarray, start, members) -> None:
    """Write one group's organ probabilities (its classes N_BACKGROUND + m) into the grid's per-class array in
    place (class members[m]; a member given as 0 is skipped). Each organ belongs to one group, so crops never
    write the same class; where groups' crops overlap and their organs together pass 1, those organs are scaled
    to sum to 1 (background is 1 - their sum, filled in by the caller)."""
    src, dst = overlap(organ_probs.shape[1:], start, prob.shape[1:])
    if src is None:
        return
    written = [label for label in members if label]
    for m, label in enumerate(members):
        if label:
            organ_probs[(label, *src)] = prob[N_BACKGROUND + m][dst]
    total = organ_probs[(slice(1, None), *src)].sum(axis=0)
    if total.max(initial=0.0) > 1.0 and written:
        scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0).astype(np.float32)
        organ_probs[(slice(1, None), *src)] *= scale


def mirror_permutation(organs) -> list[int]:
    """Class order of a group network's output after a left-right mirror: air, body, then each organ's
    counterpart (x_right <-> x_left), the others in place."""
    idx = {o: i for i, o in enumerate(organs)}
    perm = []
    for o in organs:
        perm.append(N_BACKGROUND + idx.get(lateral_twin(o), idx[o]))
    return [0, 1, *perm]


def merge_crop(best: np.ndarray, labels: np.ndarray, prob: np.ndarray, start, members) -> None:
    """Write one group's crop into the grid's label map in place: where the crop's argmax is member m (class
    N_BACKGROUND + m) and its probability beats the best so far (`best`, updated), the voxel becomes members[m];
    a member given as 0 (not found by the localiser, or not asked for) is never written."""
    src, dst = overlap(labels.shape, start, prob.shape[1:])
    if src is None:
        return
    cls = prob[(slice(None), *dst)].argmax(0)
    region_best, region_lab = best[src], labels[src]  # views
    for m, label in enumerate(members):
        if not label:
            continue
        p = prob[N_BACKGROUND + m][dst]
        win = (cls == N_BACKGROUND + m) & (p > region_best)
        region_best[win] = p[win]
        region_lab[win] = label


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)
