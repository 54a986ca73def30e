"""The slice2d engine (Salimi et al.): body crop, one small 2D Res-UNet per organ, organ subsets."""
from .engine import Slice2dEngine

__all__ = ["Slice2dEngine"]
