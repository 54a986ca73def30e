"""Training crops for the cascade's group networks, cut from the cnn3d cache (`cnn3d_data.build_cache`: every
OpenKBP case on its 128^3 canonical grid, targets 0 air, 1 body, 2.. organs).

A group network sees a crop around the union of its organs' boxes, as at inference, with the box centre
jittered by a few voxels (the localiser's error), rotated and scaled a little; its targets are air, body (which
includes the organs of the other groups) and the group's own organs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..engines.cascade.groups import MARGIN_VOX, round_up
from .cnn3d_data import N_SPECIAL, PatchPlan, PatchSampler


@dataclass(frozen=True)
class GroupPlan:
    jitter_vox: float = 4.0
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)


def member_indices(all_organs, group_organs) -> list[int]:
    return [list(all_organs).index(o) for o in group_organs]


def target_lut(all_organs, group_organs) -> np.ndarray:
    """Cache class -> group class: air 0, body 1, other groups' organs -> body, member m -> 2 + m."""
    lut = np.ones(N_SPECIAL + len(all_organs), dtype=np.int64)
    lut[0] = 0
    for m, o in enumerate(member_indices(all_organs, group_organs)):
        lut[N_SPECIAL + o] = N_SPECIAL + m
    return lut


def group_boxes(targets: np.ndarray, all_organs, group_organs) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per case, the inclusive voxel box (lo, hi) of the union of the group's organs, or None if none is there."""
    classes = [N_SPECIAL + o for o in member_indices(all_organs, group_organs)]
    out = []
    for n in range(len(targets)):
        t = np.asarray(targets[n])
        objs = ndimage.find_objects(t, max_label=max(classes))
        sl = [objs[c - 1] for c in classes if objs[c - 1] is not None]
        if not sl:
            out.append(None)
            continue
        lo = np.array([min(s[a].start for s in sl) for a in range(3)])
        hi = np.array([max(s[a].stop for s in sl) - 1 for a in range(3)])
        out.append((lo, hi))
    return out


def crop_shape(boxes, ids, quantile: float = 0.9, margin: int = MARGIN_VOX) -> tuple[int, int, int]:
    """The group's training crop: the `quantile` of its box sizes over the training cases plus the margin on
    both sides, rounded up to a multiple of 16 (larger boxes get larger crops at inference)."""
    ext = np.array([boxes[n][1] - boxes[n][0] + 1 for n in ids if boxes[n] is not None])
    return tuple(int(v) for v in round_up(np.quantile(ext, quantile, axis=0) + 2 * margin))


class GroupSampler(PatchSampler):
    """Augmented crops (windows, group targets) centred on a jittered group box."""

    def __init__(self, images, targets, boxes, lut: np.ndarray, size, plan: GroupPlan = GroupPlan(), seed: int = 0):
        super().__init__(images, targets, PatchPlan(size=tuple(size), organ_fraction=1.0,
                                                    max_rotation_deg=plan.max_rotation_deg,
                                                    scale_range=plan.scale_range, max_shift_vox=0.0), seed=seed)
        self.boxes, self.group_plan = boxes, plan
        self.lut = torch.from_numpy(lut)

    def _centre(self, n: int) -> np.ndarray:
        lo, hi = self.boxes[n]
        j = self.group_plan.jitter_vox
        return (lo + hi) / 2.0 + self.rng.uniform(-j, j, 3)

    def sample(self, case_ids) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().sample(case_ids)
        return x, self.lut[y]
