"""Segmentation engines behind one interface (see base.py)."""
from .base import ENGINES, get_engine

__all__ = ["ENGINES", "get_engine"]
