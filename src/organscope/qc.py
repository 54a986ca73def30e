"""Anatomy QC: does this scan lie in the model's body region, and is each organ found where, and as big as, the
training data says it can be? Core: imports no engine. Used by `pipeline.segment_volume` (so the API, CLI, batch
and service all get it), `api.query`, `organscope locate` and the service.

Two checks, both against figures measured on the 170 OpenKBP training cases only (`data/organ_sizes_openkbp.json`,
written by `measure_anatomy` here and `localize.organ_sizes`; thresholds chosen on training cases, never the
validation cases):

1. The scan's body region (`scan_region`), from the body's cross-section along the superior axis: a head-and-neck
   scan holds the head or neck, whose axial cross-section is small (< 300 cm^2, against >= 300 cm^2 for every
   slice of a chest, abdomen or pelvis). A scan is "head-and-neck" when such slices cover >= 30 mm (169 of 170
   training scans: 58-380 mm; the one below is a scan whose body outline is broken; every chest/abdomen scan
   tried: 0 mm). Cheap (the body mask on a ~4 mm grid), so the query path runs it once per prepared scan.
2. Each organ found (`check_organs`): at least half the smallest volume seen in training (and 2 voxels), at
   most 1.5x the largest; its centroid's offset (R, A) from the body outline's centre at its level, and its
   superior offset from the other organs found, within the training range plus a margin; and, where the model's
   card names one (`qc_min_confidence`, chosen out of fold: cv/README.md; the default ensemble's is its own,
   fitted on its fused confidences), a confidence at least that high. An
   organ touching a border of the scan is marked "cut off" (its volume is not whole): the lower size limits do
   not apply to it.

An organ that fails is "unverified": `apply_qc` removes it from the label map (and so from statistics, masks,
DICOM outputs) unless asked to keep it, and `Segmentation.qc` lists it with the reasons.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .volume import Volume

HEAD_AND_NECK = "head-and-neck"
OTHER = "not head-and-neck"

#: an axial body cross-section below this is a head or neck (cm^2); training scans' smallest slice: <= 216
#: (99th percentile); chest/abdomen/pelvis scans tried: >= 436 cm^2 (one small lung CT: 300)
NECK_AREA_CM2 = 300.0
#: ... and slices smaller than this are the skull's top or stray bits, not a neck
MIN_AREA_CM2 = 30.0
#: head-and-neck when the head/neck-sized slices cover at least this (training: >= 58 mm but one scan)
MIN_NECK_MM = 30.0
#: margins around the training ranges (what a case outside the 170 may still show)
MARGIN_BODY_MM = 15.0
MARGIN_PAIR_MM = 20.0
SIZE_FACTOR = 1.5
#: the lower volume bound is this x the smallest seen in training: the engines under-segment (cnn3d's mandible of
#: 25 ml against a training minimum of 29 ml is a true mandible on validation case 203)
MIN_VOLUME_FACTOR = 0.5
#: organs kept in a scan outside the model's region when they lie in it (none: see benchmarks/qc_check.py)
KEPT_OUTSIDE_REGION: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionCheck:
    """The scan's body region. neck_mm: length along the superior axis of slices with a head/neck-sized body
    cross-section."""

    region: str
    neck_mm: float
    reason: str = ""

    def to_dict(self) -> dict:
        return {"region": self.region, "neck_mm": round(float(self.neck_mm), 1), "reason": self.reason}


@dataclass(frozen=True)
class OrganCheck:
    """One organ found: verified or not (with the reasons), its volume, mean probability, whether it touches
    the scan's border (cut off: its volume is not whole), and whether it was kept in the outputs."""

    name: str
    verified: bool
    reasons: tuple[str, ...] = ()
    volume_ml: float = 0.0
    voxels: int = 0
    confidence: float | None = None
    cut_off: bool = False
    kept: bool = True

    @property
    def status(self) -> str:
        return "verified" if self.verified else ("unverified (kept)" if self.kept else "dropped")

    def to_dict(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons), "volume_ml": round(self.volume_ml, 3),
                "voxels": int(self.voxels),
                "confidence": None if self.confidence is None else round(float(self.confidence), 4),
                "cut_off": bool(self.cut_off)}


@dataclass(frozen=True)
class QCResult:
    """The anatomy check of one segmentation: the model's region, the scan's, and each organ found."""

    model_region: str | None
    scan: RegionCheck
    organs: dict[str, OrganCheck] = field(default_factory=dict)
    keep_unverified: bool = False

    @property
    def in_region(self) -> bool:
        return self.model_region is None or self.scan.region == self.model_region

    def unverified(self) -> list[str]:
        return [n for n, c in self.organs.items() if not c.verified]

    def dropped(self) -> list[str]:
        return [n for n, c in self.organs.items() if not c.kept]

    def cut_off(self) -> list[str]:
        return [n for n, c in self.organs.items() if c.cut_off and c.kept]

    def warning(self) -> str | None:
        """One line for people, or None when every organ found passed."""
        bad = self.unverified()
        if not self.in_region:
            what = "no head-and-neck organ is reported" if not self.keep_unverified else \
                "the organs reported are unverified"
            if not self.keep_unverified and any(self.organs[n].kept for n in self.organs):
                what = f"only {', '.join(n for n in self.organs if self.organs[n].kept)} reported"
            return (f"This scan does not look like {self.model_region} CT ({self.scan.reason}); {what}.")
        if not bad:
            return None
        verb = "kept but unverified" if self.keep_unverified else "left out"
        return (f"{len(bad)} organ(s) failed the anatomy check and are {verb}: "
                + "; ".join(f"{n} ({self.organs[n].reasons[0]})" for n in bad) + ".")

    def to_dict(self) -> dict:
        return {"model_region": self.model_region, "scan": self.scan.to_dict(), "in_region": self.in_region,
                "warning": self.warning(),
                "keep_unverified": self.keep_unverified, "dropped": self.dropped(),
                "unverified": self.unverified(), "cut_off": self.cut_off(),
                "organs": {n: c.to_dict() for n, c in self.organs.items()}}


# ---- the scan's region ----------------------------------------------------------------------------------------

def slice_areas_cm2(mask: np.ndarray, spacing_mm, axis: int) -> np.ndarray:
    """Body cross-section (cm^2) of each slice across `axis`."""
    other = tuple(a for a in range(3) if a != axis)
    return mask.sum(axis=other) * float(spacing_mm[other[0]] * spacing_mm[other[1]]) / 100.0


def region_from_mask(mask: np.ndarray, spacing_mm, axis: int) -> RegionCheck:
    area = slice_areas_cm2(mask, spacing_mm, axis)
    neck = float(((area >= MIN_AREA_CM2) & (area < NECK_AREA_CM2)).sum() * spacing_mm[axis])
    if neck >= MIN_NECK_MM:
        return RegionCheck(HEAD_AND_NECK, neck)
    big = area[area >= MIN_AREA_CM2]
    smallest = f"{big.min():.0f} cm2" if big.size else "no body found"
    return RegionCheck(OTHER, neck, f"no head or neck: its smallest body cross-section is {smallest}, "
                                    f"a neck's is under {NECK_AREA_CM2:.0f} cm2")


_BODIES: dict[int, tuple[weakref.ref, tuple]] = {}
_REGIONS: dict[int, tuple[weakref.ref, "RegionCheck"]] = {}


def _per_array(cache: dict, array: np.ndarray, compute):
    """compute() once per live array: kept in `cache` under the array's id for as long as the array lives (an
    array type without weak references is not cached)."""
    key = id(array)
    hit = cache.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    value = compute()
    try:
        cache[key] = (weakref.ref(array, lambda _r, k=key: cache.pop(k, None)), value)
    except TypeError:
        pass
    return value


def canonical_body(volume: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(body mask on the coarse grid over the canonical axes, its voxel step) of `volume`: computed once per array,
    for both the region check (asked on every point query) and the organ checks of a segmentation."""
    def compute():
        can = volume.canonical()
        return body_mask_canonical(Volume(can.view(volume.array), can.affine))

    return _per_array(_BODIES, volume.array, compute)


def scan_region(volume: Volume) -> RegionCheck:
    """The body region of `volume`, from its body mask's cross-sections along the superior (canonical S) axis;
    worked out once per array, as its body mask is (the service asks on every query: 1.8 ms each time before)."""
    def compute():
        mask, step = canonical_body(volume)
        sp = np.linalg.norm(volume.canonical().affine[:3, :3], axis=0) * np.asarray(step)
        return region_from_mask(mask, sp, 2)

    return _per_array(_REGIONS, volume.array, compute)


# ---- organ geometry (shared with the measurement in localize.organ_sizes) -------------------------------------

@dataclass(frozen=True)
class OrganGeometry:
    """An organ's voxels on a canonical (RAS+) grid: volume, box extent and centroid in mm, the centroid's (R, A)
    offset from the body outline's centre over the organ's slices, and whether it touches the grid's border."""

    voxels: int
    volume_ml: float
    extent_mm: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    body_offset_mm: tuple[float, float] | None
    cut_off: bool


def organ_geometry(canonical_labels: np.ndarray, affine: np.ndarray, body, values: dict[str, int]
                   ) -> dict[str, OrganGeometry]:
    """Geometry of each organ (name -> label value) present in a canonical RAS+ label map (any strides: a view
    is fine). `body` is (the body mask on a coarse grid over the same axes, its voxel step) from
    `body_mask_canonical`, or None. Each organ is measured inside its bounding box only (one find_objects pass),
    so a clinical-size scan costs a fraction of a second."""
    from scipy import ndimage

    sp = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    vox_ml = float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    out: dict[str, OrganGeometry] = {}
    shape = np.array(canonical_labels.shape)
    if not values:
        return out
    boxes = ndimage.find_objects(np.asarray(canonical_labels), max_label=max(values.values()))
    for name, v in values.items():
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            continue
        idx = np.argwhere(canonical_labels[box] == v) + np.array([b.start for b in box])
        lo, hi = idx.min(0), idx.max(0)
        cut = bool((lo == 0).any() or (hi == shape - 1).any())
        c_vox = idx.mean(0)
        c_mm = (np.asarray(affine, float) @ np.append(c_vox, 1.0))[:3]
        offset = None
        if body is not None:
            mask, step = body
            step = np.asarray(step)
            slab = mask[:, :, lo[2] // step[2]:hi[2] // step[2] + 1]
            if slab.any():  # the centre of the coarse cells, in voxels of the full grid
                b = np.argwhere(slab)[:, :2].mean(0) * step[:2] + (step[:2] - 1) / 2.0
                offset = tuple(float(x) for x in (c_vox[:2] - b) * sp[:2])
        out[name] = OrganGeometry(len(idx), len(idx) * vox_ml, tuple(float(x) for x in (hi - lo + 1) * sp),
                                  tuple(float(x) for x in c_mm), offset, cut)
    return out


def body_mask_canonical(canonical_ct: Volume):
    """(body mask on the coarse ~4 mm grid, its voxel step) of a canonical scan: organs need only its centre."""
    from .body import body_mask_coarse

    mask, step = body_mask_coarse(canonical_ct)
    return mask, tuple(int(x) for x in step)


# ---- the organ checks ----------------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _organ_reasons(name: str, g: OrganGeometry, others: dict[str, OrganGeometry], ref: dict) -> list[str]:
    r = ref.get(name)
    reasons: list[str] = []
    if g.voxels < 2:
        reasons.append(f"{g.voxels} voxel")
    if r is None:
        return reasons
    vmin, vmax = r.get("volume_ml_min"), r.get("volume_ml_max")
    if vmin is not None and not g.cut_off and g.volume_ml < MIN_VOLUME_FACTOR * vmin:
        reasons.append(f"{_fmt(g.volume_ml)} ml, under half the smallest seen in training ({_fmt(vmin)} ml)")
    if vmax is not None and g.volume_ml > SIZE_FACTOR * vmax:
        reasons.append(f"{_fmt(g.volume_ml)} ml, larger than 1.5x any seen in training ({_fmt(vmax)} ml)")
    rng = r.get("body_offset_mm")
    if rng is not None and g.body_offset_mm is not None:
        for ax, off, (lo, hi) in zip(("right-left", "anterior-posterior"), g.body_offset_mm, rng):
            if not lo - MARGIN_BODY_MM <= off <= hi + MARGIN_BODY_MM:
                reasons.append(f"{ax} position {off:+.0f} mm from the body's centre, outside the training range "
                               f"{lo:+.0f}..{hi:+.0f} mm")
    pairs = r.get("superior_offset_mm", {})
    checked = [o for o in others if o != name and o in pairs]
    if len(checked) >= 2:
        bad = [o for o in checked
               if not pairs[o][0] - MARGIN_PAIR_MM <= g.centroid_mm[2] - others[o].centroid_mm[2]
               <= pairs[o][1] + MARGIN_PAIR_MM]
        if 2 * len(bad) > len(checked):
            reasons.append(f"its height relative to {', '.join(bad)} is outside the training range")
    return reasons


def check_organs(volume: Volume, labels: Volume, names: dict[int, str], confidence: dict[str, float], *,
                 model_region: str | None = HEAD_AND_NECK, region: RegionCheck | None = None,
                 dataset: str = "openkbp", engine: str | None = None,
                 min_confidence: float | None = None) -> tuple[RegionCheck, dict[str, OrganCheck]]:
    """The region of the scan and each present organ's check (kept is left True: `apply_qc` decides).
    `min_confidence`: organs with a lower confidence fail (the model card's `qc_min_confidence`)."""
    from .localize.organ_sizes import organ_sizes

    region = region or (scan_region(volume) if model_region is not None else RegionCheck("unknown", 0.0))
    can = labels.canonical()  # views on the canonical axes: no full-size copy of a clinical scan
    named = {n: int(v) for v, n in names.items() if int(v) > 0}  # organ_geometry skips those with no voxel
    body = canonical_body(volume) if named else None
    geo = organ_geometry(can.view(labels.array), can.affine, body, named)
    ref = organ_sizes(dataset) if model_region == HEAD_AND_NECK else {}
    out: dict[str, OrganCheck] = {}
    for name, g in geo.items():
        conf = confidence.get(name)
        reasons = []
        if model_region is not None and region.region != model_region and name not in KEPT_OUTSIDE_REGION:
            reasons.append(f"the scan is not {model_region} CT")
        reasons += _organ_reasons(name, g, geo, ref)
        if min_confidence is not None and conf is not None and conf < min_confidence:
            reasons.append(f"its confidence {conf:.2f} is below {min_confidence:.2f}, where the model was nearly "
                           "always wrong on patients it never saw")
        out[name] = OrganCheck(name, not reasons, tuple(reasons), g.volume_ml, g.voxels, conf, g.cut_off)
    return region, out


def apply_qc(volume: Volume, seg, *, model_region: str | None = HEAD_AND_NECK, keep_unverified: bool = False,
             engine: str | None = None, dataset: str = "openkbp", min_confidence: float | None = None):
    """`seg` (a Segmentation on `volume`'s grid) checked: unverified organs removed from the label map and from
    `confidence` (unless `keep_unverified`), and `seg.qc` set."""
    region, organs = check_organs(volume, seg.labels, seg.names, seg.confidence, model_region=model_region,
                                  dataset=dataset, engine=engine, min_confidence=min_confidence)
    drop = [] if keep_unverified else [n for n, c in organs.items() if not c.verified]
    organs = {n: replace(c, kept=n not in drop) for n, c in organs.items()}
    qc = QCResult(model_region, region, organs, keep_unverified)
    if not drop:
        return replace(seg, qc=qc)
    return replace(drop_organs(seg, drop), qc=qc)


def drop_organs(seg, drop):
    """`seg` with the organs `drop` set to background (their label values and names stay)."""
    values = [v for v, n in seg.names.items() if n in set(drop)]
    arr = seg.labels.array
    lut = np.arange(max(int(arr.max(initial=0)), max(values, default=0)) + 1, dtype=arr.dtype)
    lut[values] = 0
    out = lut[arr]  # one table lookup instead of isin + where over the whole scan
    return replace(seg, labels=seg.labels.with_array(out),
                   confidence={n: c for n, c in seg.confidence.items() if n not in set(drop)})


def model_region(engine) -> str | None:
    """The body region an engine's model covers (its card's `body_region`), or None if it does not say."""
    if getattr(engine, "body_region", None) is not None:  # an engine of several models (the ensemble)
        return engine.body_region
    return getattr(model_card(engine), "body_region", None)


def model_min_confidence(engine) -> float | None:
    """The lowest organ confidence the anatomy check accepts from an engine's model (its card's
    `qc_min_confidence`; an engine of several models says it itself, the ensemble for its default members), or
    None (no threshold fitted for it)."""
    if hasattr(engine, "qc_min_confidence"):
        return engine.qc_min_confidence
    return getattr(model_card(engine), "qc_min_confidence", None)


def model_card(engine):
    """An engine's model card (`engine.card`, or `engine.model.card` for the sparse engine), or None."""
    card = getattr(engine, "card", None)
    return card if card is not None else getattr(getattr(engine, "model", None), "card", None)


def query_region(engine, volume: Volume | None) -> tuple[str | None, RegionCheck | None]:
    """(the model's region, the scan's) for point queries: None, None when either is unknown."""
    region = model_region(engine)
    if region is None or volume is None:
        return region, None
    return region, scan_region(volume)


def measure_anatomy(data_root: Path, split: str = "train") -> dict:
    """What the anatomy check (this module) compares against, per organ over a split (contoured organs only):
    the smallest and largest volume, the largest box extent (R, A, S), the range of the centroid's (R, A)
    offset from the body outline's centre at the organ's level, and the range of its centroid's height above
    each other organ's (S, mm)."""
    from .datasets import Dataset

    ds = Dataset(data_root)
    geo: dict[str, list] = {}
    for case in ds.split(split):
        lab = case.load_labels().to_canonical()[0]
        body = body_mask_canonical(case.load_image().to_canonical()[0])
        g = organ_geometry(lab.array, lab.affine, body, {n: ds.label_map.ids[n] for n in case.organs})
        for name, og in g.items():
            geo.setdefault(name, []).append((og, g))
    out = {}
    for name, rows in geo.items():
        vol = [og.volume_ml for og, _ in rows]
        ext = np.array([og.extent_mm for og, _ in rows])
        off = np.array([og.body_offset_mm for og, _ in rows if og.body_offset_mm is not None])
        pairs: dict[str, list[float]] = {}
        for og, g in rows:
            for other, o in g.items():
                if other != name:
                    pairs.setdefault(other, []).append(og.centroid_mm[2] - o.centroid_mm[2])
        out[name] = {"volume_ml_min": round(float(min(vol)), 3), "volume_ml_max": round(float(max(vol)), 2),
                     "extent_mm_max": [round(float(x), 1) for x in ext.max(0)],
                     "body_offset_mm": [[round(float(off[:, a].min()), 1), round(float(off[:, a].max()), 1)]
                                        for a in range(2)],
                     "superior_offset_mm": {o: [round(float(min(v)), 1), round(float(max(v)), 1)]
                                            for o, v in sorted(pairs.items())}}
    return out


if __name__ == "__main__":  # python -m organscope.qc DATA_DIR: (re)measure data/organ_sizes_openkbp.json
    import json
    import sys

    from .localize.organ_sizes import DATA_DIR, measure

    doc = measure(Path(sys.argv[1]))
    for organ, extra in measure_anatomy(Path(sys.argv[1])).items():
        doc["organs"][organ].update(extra)
    (DATA_DIR / "organ_sizes_openkbp.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
