from .engine import DEFAULT_MEMBERS, QC_MIN_CONFIDENCE, EnsembleEngine

__all__ = ["DEFAULT_MEMBERS", "EnsembleEngine", "QC_MIN_CONFIDENCE"]
