"""The cnn3d engine (COBRA, Henderson et al.): a tiny factorised 3D U-Net on the whole scan, ONNX on CPU."""
from .engine import Cnn3dEngine

__all__ = ["Cnn3dEngine"]
