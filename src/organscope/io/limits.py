"""Size caps every reader checks before it allocates: voxels declared by a header and bytes a compressed stream
may inflate to. One sentence (InputError) instead of a MemoryError or a machine brought to its knees.

    Limits(max_voxels=..., max_bytes=...)   the caps; frozen
    default_limits()                        the defaults, or those set by ORGANSCOPE_MAX_VOXELS / ORGANSCOPE_MAX_BYTES
    check_voxels(shape, itemsize, source, limits)   InputError if a declared shape exceeds a cap
    check_bytes(n_bytes, source, limits)             InputError if a (decompressed) size exceeds max_bytes

The CLI uses the defaults; the service passes its own (smaller) Limits to `load_volume(..., limits=...)`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError, VolumeTooLarge

#: 512 x 512 x 2048 voxels: a whole-body CT at 0.5 mm slices fits, a header declaring 100000^3 does not.
DEFAULT_MAX_VOXELS = 512 * 512 * 2048
#: Bytes a volume's data (decompressed) may take: the default voxel cap at 8 bytes a voxel.
DEFAULT_MAX_BYTES = DEFAULT_MAX_VOXELS * 8


@dataclass(frozen=True)
class Limits:
    """Caps on the size of one volume: voxels and bytes of (decompressed) data."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        if int(self.max_voxels) < 1 or int(self.max_bytes) < 1:
            raise ValueError("Limits must be positive.")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"The environment variable {name} must be a whole number, got {text!r}.") from None
    if value < 1:
        raise InputError(f"The environment variable {name} must be positive, got {text!r}.")
    return value


def default_limits() -> Limits:
    """The default caps, overridden by the environment variables ORGANSCOPE_MAX_VOXELS and ORGANSCOPE_MAX_BYTES."""
    return Limits(_env_int("ORGANSCOPE_MAX_VOXELS", DEFAULT_MAX_VOXELS),
                  _env_int("ORGANSCOPE_MAX_BYTES", DEFAULT_MAX_BYTES))


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:g}"  # pragma: no cover


def check_voxels(shape: Sequence[int], itemsize: int, source: str, limits: Limits | None = None) -> int:
    """The number of voxels of `shape`; InputError if a dimension is negative or the total exceeds a cap."""
    limits = limits or default_limits()
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InputError(f"{source} declares a negative size {tuple(dims)} in its header; the file is corrupt.")
    n = math.prod(dims)
    if n > limits.max_voxels:
        raise VolumeTooLarge(f"{source} declares {n:.3g} voxels {tuple(dims)}, more than the limit of "
                         f"{limits.max_voxels:.3g}; the header is corrupt or the volume is too large to open.")
    check_bytes(n * int(itemsize), source, limits)
    return n


def check_bytes(n_bytes: int, source: str, limits: Limits | None = None) -> None:
    """InputError if `n_bytes` of (decompressed) data exceeds the byte cap."""
    limits = limits or default_limits()
    if n_bytes > limits.max_bytes:
        raise VolumeTooLarge(f"{source} holds more than {_human(limits.max_bytes)} of image data (the limit); the file "
                         "is corrupt (a compression bomb?) or the volume is too large to open.")
