"""Sparse intensity descriptors: the sampling pattern (offsets in mm) and the compiled gather kernel."""
from .pattern import Pattern, paper_pattern

__all__ = ["Pattern", "paper_pattern"]
