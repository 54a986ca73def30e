"""The cascade engine (locate, then segment): organ boxes from a localiser, then one compact 3D residual U-Net
per group of neighbouring organs on a crop around the group, merged by the highest probability."""
from .engine import CascadeEngine
from .groups import GROUPS

__all__ = ["CascadeEngine", "GROUPS"]
