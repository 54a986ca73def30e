"""Checks that a loaded volume is a usable CT in Hounsfield units."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..volume import Volume

#: Below this lowest value there is neither air (-1000 HU) nor fat (about -100 HU) in the image.
MAX_LOWEST_HU = -100.0
#: Padding values of real scanners go down to about -3024; beyond these bounds values are not HU.
MIN_PLAUSIBLE_HU = -10000.0
MAX_PLAUSIBLE_HU = 40000.0


def validate_ct(volume: Volume, *, source: str = "The volume") -> None:
    """Raise InputError with one sentence if `volume` is not a plausible CT in HU.

    Checks: non-empty 3D with at least 2 voxels along each axis, finite values, not constant,
    and an intensity range that contains air or fat and stays within what scanners store.
    """
    arr = volume.array
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise InputError(f"{source} is 2D (shape {arr.shape}): organscope needs a CT volume with several slices.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{source} holds {arr.dtype} values; a CT volume holds integer or float HU values.")
    if arr.dtype.itemsize == 1:  # bool, int8, uint8: 256 values at most, while CT spans air to bone
        raise InputError(
            f"{source} holds 8-bit values ({arr.dtype}: {int(arr.min())} to {int(arr.max())}), which cannot be "
            "Hounsfield units (air -1000 to bone +1000 and more); it is a photo, a mask or a rescaled image "
            "(HU/10?): give the CT in HU (int16 or float)."
        )
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(arr, source)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < hi and -128 <= lo <= MAX_LOWEST_HU and hi <= 127:
        raise InputError(
            f"{source} has values only from {lo:g} to {hi:g}, too narrow a range for Hounsfield units (air is "
            "-1000, bone several hundred); it looks rescaled (HU/10?): give the CT in HU."
        )
    if lo == hi:
        raise InputError(f"{source} is constant (every voxel is {lo:g}); it holds no image.")
    if lo < MIN_PLAUSIBLE_HU or hi > MAX_PLAUSIBLE_HU:
        raise InputError(
            f"{source} has values from {lo:g} to {hi:g}, far outside the Hounsfield range of CT "
            "(air -1000, bone up to about 3000); it does not look like a CT in HU."
        )
    if lo > MAX_LOWEST_HU:
        hint = (
            " (if it is CT stored without its rescale intercept, subtract 1024)"
            if lo >= 0 and 2000 < hi < 5000 else ""
        )
        raise InputError(
            f"{source} has values from {lo:g} to {hi:g} with no air or fat (below {MAX_LOWEST_HU:g}), "
            f"so it does not look like a CT in Hounsfield units (an MRI or a normalised image?){hint}."
        )


def _check_finite(arr: np.ndarray, source: str) -> None:
    finite = np.isfinite(arr)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if n_bad == finite.size:
        raise InputError(f"{source} contains only NaN or infinite values; it holds no image.")
    if n_bad:
        raise InputError(
            f"{source} contains {n_bad} NaN or infinite value(s) out of {finite.size}; "
            "a CT in HU must be finite everywhere."
        )
