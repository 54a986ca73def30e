"""Training data of the cnn3d engine: every case on the fixed grid, targets with the paper's air/body split,
and augmented patches drawn from them.

Targets: 0 air, 1 body (HU > -200, closed, holes filled: the paper's split of the background), 2.. the organs
of the label map in order. Each case also records which organs were contoured: the loss treats an
uncontoured organ as unknown (it may hide in the body class), never as background.

Patches: the network is fully convolutional, so it trains on patches (48x48x64 voxels, ~20x20x15 cm, 80 % of
them centred on an organ voxel) and infers on the whole 128^3 grid. A full-volume step costs 4 s on two
cores against 0.25 s for a batch of two patches, and many more steps is what a CPU-only training needs. A
first run with 64x64x80 patches, half of them on organs, still predicted no organ voxel after 500 steps.
Augmentation as in the paper: shifts, in-plane rotation (+-10 deg), scaling (0.8-1.2), applied by resampling
the patch through one random affine (trilinear for HU, nearest for targets).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from ..datasets import Dataset
from ..engines.cnn3d.preprocess import BODY_THRESHOLD_HU, GRID, WINDOWS_HU
from ..grid import to_grid
from ..sampling.points import body_mask

N_SPECIAL = 2  # air, body


def body_target(hu: np.ndarray) -> np.ndarray:
    body = body_mask(hu, BODY_THRESHOLD_HU)
    return ndimage.binary_fill_holes(ndimage.binary_closing(body, iterations=2))


def build_cache(data_root: Path, out_dir: Path, splits=("train", "validation")) -> None:
    """Write images.npy (int16 HU), targets.npy (uint8), contoured.npy (bool, case x organ) and cases.json."""
    ds = Dataset(data_root)
    cases = [c for s in splits for c in ds.split(s)]
    names = [ds.label_map.names[i] for i in sorted(ds.label_map.names)]
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(out_dir / "images.npy", "w+", np.int16, (len(cases),) + GRID)
    targets = np.lib.format.open_memmap(out_dir / "targets.npy", "w+", np.uint8, (len(cases),) + GRID)
    contoured = np.zeros((len(cases), len(names)), dtype=bool)
    for n, case in enumerate(tqdm(cases, desc="cnn3d cache")):
        hu, gmap = to_grid(case.load_image(), GRID)
        if not gmap.identity:
            raise ValueError(f"{case.case_id}: training expects scans already on the {GRID} grid.")
        lab = case.load_labels().to_canonical()[0].array
        t = body_target(hu).astype(np.uint8)
        organ = lab > 0
        t[organ] = lab[organ] + N_SPECIAL - 1
        images[n] = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
        targets[n] = t
        contoured[n] = [name in case.organs for name in names]
    images.flush()
    targets.flush()
    np.save(out_dir / "contoured.npy", contoured)
    meta = {"cases": [c.case_id for c in cases], "splits": [c.split for c in cases], "organs": names,
            "grid": list(GRID)}
    (out_dir / "cases.json").write_text(json.dumps(meta, indent=1))


@dataclass(frozen=True)
class PatchPlan:
    size: tuple[int, int, int] = (48, 48, 64)
    organ_fraction: float = 0.8
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    max_shift_vox: float = 4.0
    #: centre organ patches on an organ drawn uniformly among the case's organs, then one of its voxels, instead
    #: of on any organ voxel (where the mandible's ~1400 voxels win over the oesophagus's ~260): for a rare organ
    #: whose output class collapses in training (cv/README.md, cnn3d folds 1-3)
    balance_organs: bool = False


def windows_torch(hu: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) HU -> (B, 2, ...) windows in [0, 1], identical to preprocess.windows."""
    chans = [((hu - (level - width / 2)) / width).clamp(0.0, 1.0) for level, width in WINDOWS_HU]
    return torch.cat(chans, dim=1)


class PatchSampler:
    """Random augmented patches (windows, targets) from the cached cases."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, plan: PatchPlan, seed: int = 0):
        self.images, self.targets, self.plan = images, targets, plan
        self.rng = np.random.default_rng(seed)
        self._organ_vox = [None] * len(images)

    def _organ_voxels(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Case n's organ voxels (k, 3) in raster order (the order unbalanced draws index, as they always have),
        their indices ordered by label, and where each label's run starts in that order (and its end)."""
        if self._organ_vox[n] is None:
            t = np.asarray(self.targets[n])
            vox = np.argwhere(t >= N_SPECIAL).astype(np.int16)
            labels = t[tuple(vox.T)]
            order = np.argsort(labels, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0]) if len(vox) else np.zeros(0, int)
            self._organ_vox[n] = (vox, order, np.r_[starts, len(vox)])
        return self._organ_vox[n]

    def _centre(self, n: int) -> np.ndarray:
        shape = np.array(self.images.shape[1:])
        organ, order, bounds = self._organ_voxels(n)
        if self.rng.random() < self.plan.organ_fraction and len(organ):
            if self.plan.balance_organs:
                k = self.rng.integers(len(bounds) - 1)  # an organ of this case, each as likely
                c = organ[order[self.rng.integers(bounds[k], bounds[k + 1])]].astype(float)
            else:
                c = organ[self.rng.integers(len(organ))].astype(float)
        else:
            half = np.array(self.plan.size) / 2
            c = self.rng.uniform(half * 0.5, shape - 1 - half * 0.5)
        return c + self.rng.uniform(-self.plan.max_shift_vox, self.plan.max_shift_vox, 3)

    def _grid(self, n: int) -> torch.Tensor:
        """Normalised sampling grid (1, d, h, w, 3) of one augmented patch in case n's volume."""
        p = self.plan
        shape = np.array(self.images.shape[1:], dtype=float)
        ang = np.deg2rad(self.rng.uniform(-p.max_rotation_deg, p.max_rotation_deg))
        rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
        m = rot * self.rng.uniform(*p.scale_range)
        axes = [np.arange(s) - (s - 1) / 2 for s in p.size]
        local = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        vox = local @ m.T + self._centre(n)
        norm = 2 * vox / (shape - 1) - 1
        return torch.from_numpy(norm[..., ::-1].copy()).float()[None]  # grid_sample wants (x=k, y=j, z=i)

    def sample(self, case_ids) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for n in case_ids:
            grid = self._grid(n)
            img = torch.from_numpy(np.asarray(self.images[n], dtype=np.float32))[None, None]
            tgt = torch.from_numpy(np.asarray(self.targets[n], dtype=np.float32))[None, None]
            hu = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
            t = F.grid_sample(tgt, grid, mode="nearest", padding_mode="zeros", align_corners=True)
            xs.append(windows_torch(hu))
            ys.append(t[:, 0].round().long())
        return torch.cat(xs), torch.cat(ys)
