"""Organ boxes: found on a canonical (RAS+) grid, reported in world mm and in voxel indices of the input grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Canonical, voxel_to_world


@dataclass(frozen=True)
class OrganLocation:
    """An organ's place in a scan. Boxes are inclusive; box_mm spans the box's voxel centres (the axis-aligned
    world box around them on oblique grids); box_voxels indexes the input's own grid (its axis order)."""

    name: str
    present: bool
    centroid_mm: tuple[float, float, float] | None = None
    box_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    box_voxels: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    confidence: float = 0.0
    reason: str | None = None  # why a found organ is reported as not present (the anatomy check), or None

    def to_dict(self) -> dict:
        """The JSON form; an absent organ has null centroid and boxes."""
        present = self.present and self.centroid_mm is not None
        return {
            "present": bool(self.present),
            "centroid_mm": [round(v, 2) for v in self.centroid_mm] if present else None,
            "box_mm": [[round(v, 2) for v in c] for c in self.box_mm] if present else None,
            "box_voxels": [[int(v) for v in c] for c in self.box_voxels] if present else None,
            "confidence": round(float(self.confidence), 4),
        } | ({} if self.reason is None else {"reason": self.reason})


def location(name: str, start, stop, centroid_vox, confidence: float, canonical: Canonical) -> OrganLocation:
    """An OrganLocation from a box [start, stop) and centroid found on the canonical grid of `canonical`."""
    start, stop = np.asarray(start, int), np.asarray(stop, int)
    ends = np.stack([start, stop - 1])  # inclusive
    corners = np.array([[ends[(m >> a) & 1, a] for a in range(3)] for m in range(8)], dtype=float)
    world = voxel_to_world(canonical.affine, corners)
    centroid = voxel_to_world(canonical.affine, np.asarray(centroid_vox, float)[None])[0]
    lo, hi = canonical.box_to_input(start, stop)
    return OrganLocation(name, True, tuple(float(v) for v in centroid),
                         (tuple(float(v) for v in world.min(0)), tuple(float(v) for v in world.max(0))),
                         (lo, hi), float(confidence))


def locations_to_json(locations: dict[str, OrganLocation]) -> dict:
    """The `organscope locate --json` document: {"organs": {name: {...}}}."""
    return {"organs": {name: loc.to_dict() for name, loc in locations.items()}}


def check_locations(locations: dict[str, OrganLocation], volume, model_region: str | None = "head-and-neck", *,
                    keep_unverified: bool = False) -> tuple[dict[str, OrganLocation], str | None]:
    """The anatomy check (organscope.qc) on a localiser's answer: in a scan outside the model's body region every
    organ found is reported as not present, with the reason (kept, with the reason, if `keep_unverified`).
    Returns the locations and the warning line (None when all passed)."""
    from dataclasses import replace

    from ..qc import scan_region

    if model_region is None:
        return locations, None
    region = scan_region(volume)
    if region.region == model_region:
        return locations, None
    reason = f"the scan is not {model_region} CT ({region.reason})"
    out = {n: (replace(loc, present=keep_unverified, reason=reason) if loc.present else loc)
           for n, loc in locations.items()}
    what = "the organs reported are unverified" if keep_unverified else "no head-and-neck organ is reported"
    return out, f"This scan does not look like {model_region} CT ({region.reason}); {what}."
