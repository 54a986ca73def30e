"""Organ localisation: per organ present/absent, centroid and box, before (or instead of) segmentation."""
from .boxes import OrganLocation, locations_to_json

__all__ = ["OrganLocation", "locations_to_json"]
