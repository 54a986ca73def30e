from .engine import DEFAULT_MEMBERS, EnsembleEngine

__all__ = ["DEFAULT_MEMBERS", "EnsembleEngine"]
