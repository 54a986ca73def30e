"""Training set of the sparse point classifier: descriptors (int8, value = code / 32) at sampled voxels.

Partial labels: each point carries the set of classes it may belong to, as a bit mask. A voxel of a
contoured organ allows only that organ; a background voxel allows background *and every organ not
contoured in that case* (it may be one of them). The loss (`-log sum_{allowed} p`) then never teaches
"background" on an uncontoured organ, and every case can contribute background points.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..organs import lateral_twin
from ..sampling.gather import gather_q8
from ..sampling.pattern import Pattern
from ..sampling.points import body_mask
from ..volume import Volume


@dataclass(frozen=True)
class SamplingPlan:
    n_body: int = 2700
    n_band: int = 2400
    n_balanced: int = 900
    aug_chunks: int = 6          # each case's points are split in chunks, each with its own pattern transform
    aug_fraction: float = 0.5    # fraction of chunks that are augmented (the rest use the exact pattern)
    max_rotation_deg: float = 8.0
    max_scale: float = 0.08
    band_mm: float = 12.0
    hu_scale_jitter: float = 0.0  # augmented chunks: HU multiplied by 1 +- this (contrast / calibration)
    hu_shift_jitter: float = 0.0  # ... and shifted by +- this many HU
    cut_fraction: float = 0.0    # fraction of chunks read as if the scan's in-plane field of view were cut (below)
    cut_mm: tuple[float, float] = (200.0, 400.0)  # ... to a square this wide (uniform), around the body's centre
    cut_shift_mm: float = 30.0   # ... shifted by up to this
    flip_fraction: float = 0.0   # fraction of chunks read left-right mirrored, their left/right organs swapped
    elastic_fraction: float = 0.0  # fraction of chunks whose pattern is also deformed elastically (below)
    elastic_mm: float = 3.0      # ... by a displacement field with this standard deviation per axis
    elastic_grid_mm: float = 32.0  # ... drawn on control points this far apart (cubic B-spline between them)


#: The sampling of the shipped model: 80 % of point chunks with a random pattern rotation (to 12 deg), scaling
#: (to 12 %) and HU jitter; the plain SamplingPlan() (50 %, 8 deg, 8 %, no HU jitter) gave the same Dice (0.696).
SHIPPED_PLAN = SamplingPlan(aug_fraction=0.8, max_rotation_deg=12.0, max_scale=0.12, hu_scale_jitter=0.05,
                            hu_shift_jitter=20.0)


def load_canonical_case(image_path, label_path=None) -> tuple[Volume, np.ndarray | None]:
    img = nib.load(str(image_path))
    vol = Volume(np.asanyarray(img.dataobj).astype(np.int16), img.affine)
    canon, ornt = vol.to_canonical()
    labels = None
    if label_path is not None:
        lab = Volume(np.asanyarray(nib.load(str(label_path)).dataobj).astype(np.uint8), img.affine)
        labels = lab.to_canonical()[0].array
    return canon, labels


def random_transform(rng: np.random.Generator, max_rotation_deg: float, max_scale: float) -> np.ndarray:
    """A small random rotation (about a random axis) times an anisotropic scaling."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)
    return rot @ np.diag(1 + rng.uniform(-max_scale, max_scale, 3))


def random_displacement(rng: np.random.Generator, offsets_mm: np.ndarray, std_mm: float,
                        grid_mm: float) -> np.ndarray:
    """(M, 3) mm: a smooth random displacement of the pattern's offsets, as if the anatomy around the query
    point were deformed elastically: per axis, independent normal values on control points `grid_mm` apart over
    the pattern's extent, blended by cubic B-spline (approximation, not interpolation: no overshoot between
    them), scaled so the field's standard deviation per axis is `std_mm`. The query point itself (offset 0)
    does not move, so its label stays right: the field's value there is subtracted, and near the point the
    displacement grows with the distance (3 mm on a 32 mm grid, root mean square per axis relative to the point,
    the paper pattern's samples: 0.4 mm within 5 mm of it, 2.7 mm at 15-40 mm, 4.5 mm beyond 80 mm)."""
    from scipy.ndimage import map_coordinates

    offsets_mm = np.asarray(offsets_mm, float)
    lo = offsets_mm.min(0) - grid_mm  # one control point of margin each side: the spline's support
    n = np.ceil((offsets_mm.max(0) + grid_mm - lo) / grid_mm).astype(int) + 1
    # a cubic B-spline blend of unit-variance values has variance (151/315) per axis on average: 0.110 in 3D
    ctrl = rng.normal(0.0, std_mm / (151 / 315) ** 1.5, (3, *n))
    at = ((np.vstack([offsets_mm, np.zeros((1, 3))]) - lo) / grid_mm).T
    field = np.stack([map_coordinates(ctrl[a], at, order=3, mode="nearest", prefilter=False) for a in range(3)],
                     axis=1)
    return field[:-1] - field[-1]


def mirror_lut(ids: dict[str, int]) -> np.ndarray:
    """Label id -> the id of the organ's left-right counterpart (name ending _right <-> _left, when the dataset
    has both), itself otherwise."""
    lut = np.arange(max(ids.values()) + 1)
    for name, i in ids.items():
        lut[i] = ids.get(lateral_twin(name), i)
    return lut


def allowed_bits(point_labels: np.ndarray, uncontoured_ids) -> np.ndarray:
    """Bit mask per point of the classes it may belong to (bit c = class c)."""
    bits = (np.uint16(1) << point_labels.astype(np.uint16)).astype(np.uint16)
    extra = np.uint16(sum(1 << int(i) for i in uncontoured_ids))
    bits[point_labels == 0] |= extra
    return bits


def build(data_root: Path, out_dir: Path, pattern: Pattern, plan: SamplingPlan, *, split: str | None = None,
          seed: int = 0, augment: bool = True, limit: int | None = None, cases: list[str] | None = None) -> Path:
    """A fixed descriptor set (the validation set watched during training): one draw of `EpochSampler`, written
    as X.npy (int8 descriptors), y.npy (uint8 centre labels), allowed.npy (uint16 bits), case.npy."""
    sampler = EpochSampler(data_root, pattern, plan, split=split, limit=limit, cases=cases)
    out_dir.mkdir(parents=True, exist_ok=True)
    X = np.lib.format.open_memmap(out_dir / "X.npy", "w+", np.int8, (sampler.size, pattern.size))
    y, bits, case_idx = sampler.fill(X, np.random.default_rng(seed), augment=augment)
    X.flush()
    del X
    np.save(out_dir / "y.npy", y)
    np.save(out_dir / "allowed.npy", bits)
    np.save(out_dir / "case.npy", case_idx)
    (out_dir / "info.json").write_text(json.dumps({"n": sampler.size, "cases": [c["case"] for c in sampler.cases],
                                                   "split": split, "pattern": pattern.name, "plan": asdict(plan)},
                                                  indent=1))
    return out_dir


@dataclass
class _CaseIndex:
    volume: np.ndarray        # canonical int16 HU
    affine: np.ndarray
    labels: np.ndarray        # canonical uint8, flattened
    body_idx: np.ndarray      # flat indices (int32) of body voxels
    near_idx: np.ndarray      # flat indices of body voxels within band_mm of a contoured organ
    organ_idx: list           # flat indices of each contoured organ present
    uncontoured: list
    body_centre: np.ndarray | None = None  # canonical voxel (x, y) of the body's in-plane box centre


def _jitter_codes(codes: np.ndarray, rng: np.random.Generator, plan: SamplingPlan) -> None:
    """In place: HU -> HU * scale + shift on int8 codes (4 HU per code), re-clipped. Samples outside the scan
    (code 0) are shifted too; the shift is small (+-20 HU), so this only blurs the outside marker a little."""
    scale = 1 + rng.uniform(-plan.hu_scale_jitter, plan.hu_scale_jitter)
    shift = rng.uniform(-plan.hu_shift_jitter, plan.hu_shift_jitter) / 4.0
    codes[:] = np.clip(np.rint(codes.astype(np.float32) * scale + shift), -128, 127).astype(np.int8)


def _inplane_centre(body: np.ndarray) -> np.ndarray:
    """Canonical voxel (x, y) of the centre of the body's in-plane bounding box."""
    out = []
    for ax in (0, 1):
        idx = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != ax)))
        out.append((idx.min() + idx.max()) / 2 if idx.size else body.shape[ax] / 2)
    return np.array(out)


def cut_field_of_view(codes: np.ndarray, centers: np.ndarray, offsets_vox: np.ndarray, ix: "_CaseIndex",
                      rng: np.random.Generator, plan: SamplingPlan) -> None:
    """In place: the descriptors (int8 codes) of the points inside a random square in-plane field of view, as a
    scan cut to that square would give them: samples outside it read 0, the value outside a scan (a diagnostic
    neck CT is often 250-350 mm across where the training scans are ~500 mm). Points outside the square keep
    their descriptors (such a scan would not hold them)."""
    sp = np.sqrt((ix.affine[:3, :3] ** 2).sum(0))[:2]
    width = rng.uniform(*plan.cut_mm)
    centre = ix.body_centre + rng.uniform(-plan.cut_shift_mm, plan.cut_shift_mm, 2) / sp
    lo = np.floor(centre - width / 2 / sp).astype(np.int64)
    hi = np.ceil(centre + width / 2 / sp).astype(np.int64)  # inclusive
    inside = np.all((centers[:, :2] >= lo) & (centers[:, :2] <= hi), axis=1)
    rows = np.flatnonzero(inside)
    if not rows.size:
        return
    off = offsets_vox[:, :2].astype(np.int64)
    for s in range(0, rows.size, 256):
        r = rows[s:s + 256]
        pos = centers[r, None, :2].astype(np.int64) + off[None]
        out = np.any((pos < lo) | (pos > hi), axis=2)
        block = codes[r]
        block[out] = 0
        codes[r] = block


class EpochSampler:
    """Fresh training points and fresh pattern transforms every epoch (the paper used 100k points per scan;
    a fixed small set over-fits), gathered straight into a reusable int8 buffer. Scans stay in memory."""

    def __init__(self, data_root: Path, pattern: Pattern, plan: SamplingPlan, *, split: str | None = "train",
                 limit: int | None = None, cases: list[str] | None = None):
        """The cases of `split`, or, given `cases` (ids, e.g. a cross-validation fold's), those whatever their
        split."""
        from scipy import ndimage

        meta = json.loads((data_root / "dataset.json").read_text())
        self.pattern, self.plan = pattern, plan
        if cases is not None:
            unknown = sorted(set(cases) - {c["case"] for c in meta["cases"]})
            if unknown:
                raise ValueError(f"cases not in {data_root}/dataset.json: {unknown[:5]}")
            self.cases = [c for c in meta["cases"] if c["case"] in set(cases)][:limit]
            split = f"{len(self.cases)} cases"
        else:
            self.cases = [c for c in meta["cases"] if c["split"] == split][:limit]
        ids = meta["labels"]
        self.index: list[_CaseIndex] = []
        for c in tqdm(self.cases, desc=f"indexing {split}"):
            canon, labels = load_canonical_case(data_root / "images" / f"{c['case']}.nii.gz",
                                                data_root / "labels" / f"{c['case']}.nii.gz")
            body = body_mask(canon.array)
            contoured = [ids[o] for o in c["organs"]]
            organs = np.isin(labels, contoured)
            band = tuple(int(np.ceil(plan.band_mm / sp)) for sp in canon.spacing_mm)
            near = ndimage.binary_dilation(organs, np.ones(tuple(2 * b + 1 for b in band), bool)) & body
            flat = labels.reshape(-1)
            self.index.append(_CaseIndex(
                canon.array, canon.affine, flat, np.flatnonzero(body).astype(np.int32),
                np.flatnonzero(near).astype(np.int32),
                [np.flatnonzero(flat == i).astype(np.int32) for i in contoured if np.any(flat == i)],
                [i for n, i in ids.items() if i != 0 and i not in contoured], _inplane_centre(body)))
        self.per_case = plan.n_body + plan.n_band + plan.n_balanced
        #: label id -> the id of its left-right counterpart (x_right <-> x_left), itself otherwise
        self.mirror_lut = mirror_lut(ids)
        self.size = self.per_case * len(self.index)

    def fill(self, X: np.ndarray, rng: np.random.Generator, *, augment: bool = True):
        """Sample every case anew into X (size x M int8); return (labels uint8, allowed bits, case index)."""
        plan = self.plan
        ys, bits, cases = [], [], []
        n = 0
        for ci, ix in enumerate(self.index):
            picks = [ix.body_idx[rng.integers(0, len(ix.body_idx), plan.n_body)],
                     ix.near_idx[rng.integers(0, len(ix.near_idx), plan.n_band)] if len(ix.near_idx) else
                     ix.body_idx[rng.integers(0, len(ix.body_idx), plan.n_band)]]
            k = len(ix.organ_idx)
            for j, org in enumerate(ix.organ_idx):
                cnt = plan.n_balanced // k + (1 if j < plan.n_balanced % k else 0)
                picks.append(org[rng.integers(0, len(org), cnt)])
            if not k:
                picks.append(ix.body_idx[rng.integers(0, len(ix.body_idx), plan.n_balanced)])
            flat = np.concatenate(picks)
            rng.shuffle(flat)
            centers = np.stack(np.unravel_index(flat, ix.volume.shape), axis=1).astype(np.int32)
            bounds = np.linspace(0, len(centers), plan.aug_chunks + 1).astype(int)
            lab = ix.labels[flat]
            mirrored = np.zeros(len(flat), bool)
            for a, b in zip(bounds[:-1], bounds[1:]):
                tf = None
                if augment and rng.random() < plan.aug_fraction:
                    tf = random_transform(rng, plan.max_rotation_deg, plan.max_scale)
                augmented = tf is not None
                if augment and plan.flip_fraction and rng.random() < plan.flip_fraction:
                    # the patient seen mirrored: the pattern's offsets negated along R-L (the scans are canonical
                    # RAS+), so a left organ's surroundings look like a right one's, and its label says so
                    tf = np.diag([-1.0, 1.0, 1.0]) @ (np.eye(3) if tf is None else tf)
                    lab[a:b] = self.mirror_lut[lab[a:b]]
                    mirrored[a:b] = True
                disp = None
                if augment and plan.elastic_fraction and rng.random() < plan.elastic_fraction:
                    disp = random_displacement(rng, self.pattern.offsets_mm, plan.elastic_mm, plan.elastic_grid_mm)
                offsets = self.pattern.offsets_vox(ix.affine, transform=tf, displacement_mm=disp)
                gather_q8(ix.volume, centers[a:b], offsets, out=X[n + a:n + b])
                if augmented and (plan.hu_scale_jitter or plan.hu_shift_jitter):
                    _jitter_codes(X[n + a:n + b], rng, plan)
                if augment and plan.cut_fraction and rng.random() < plan.cut_fraction:
                    cut_field_of_view(X[n + a:n + b], centers[a:b], offsets, ix, rng, plan)
            ys.append(lab)
            bits.append(np.where(mirrored, allowed_bits(lab, self.mirror_lut[np.asarray(ix.uncontoured, int)]),
                                 allowed_bits(lab, ix.uncontoured)))
            cases.append(np.full(len(flat), ci, np.int16))
            n += len(flat)
        return np.concatenate(ys), np.concatenate(bits), np.concatenate(cases)
