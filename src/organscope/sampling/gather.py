"""Compiled descriptor gather: for many query voxels, read the volume at every pattern offset.

Values are HU / 128 clipped to [-4, 4] (the paper's normalisation); samples outside the volume are 0.
The volume is read as stored (int16 HU): no float copy of the scan is ever made.
`gather_q8` gives the same descriptor quantised to int8 (HU / 4, so value = q / 32), for compact
training sets; `gather_u8` the same codes shifted by 128 into uint8 (value = (u - 128) / 32), the input of the
int8 first layer (uint8 x int8 is the fast integer matrix product on x86).
"""
from __future__ import annotations

import numba as nb
import numpy as np

HU_SCALE = 128.0
CLIP = 4.0
Q8_PER_UNIT = 32.0  # int8 code = round(value * 32); value in [-4, 4) -> code in [-128, 127]


def as_hu_int16(array: np.ndarray) -> np.ndarray:
    """The volume as a C-contiguous int16 HU array (no copy when it already is one)."""
    a = np.asarray(array)
    if a.dtype == np.int16 and a.flags.c_contiguous:
        return a
    if np.issubdtype(a.dtype, np.floating):
        a = np.rint(np.clip(a, -32768, 32767))
    return np.ascontiguousarray(np.clip(a, -32768, 32767).astype(np.int16))


@nb.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _gather_f32(vol, centers, offsets, out):
    n0, n1, n2 = vol.shape
    flat = vol.reshape(-1)
    s0 = n1 * n2
    m = offsets.shape[0]
    lin = offsets[:, 0].astype(np.int64) * s0 + offsets[:, 1].astype(np.int64) * n2 + offsets[:, 2]
    for p in nb.prange(centers.shape[0]):
        c0, c1, c2 = centers[p, 0], centers[p, 1], centers[p, 2]
        base = np.int64(c0) * s0 + np.int64(c1) * n2 + c2
        for k in range(m):
            a = c0 + offsets[k, 0]
            b = c1 + offsets[k, 1]
            c = c2 + offsets[k, 2]
            if 0 <= a < n0 and 0 <= b < n1 and 0 <= c < n2:
                v = flat[base + lin[k]] * (1.0 / 128.0)
                out[p, k] = min(max(v, -4.0), 4.0)
            else:
                out[p, k] = 0.0


@nb.njit(parallel=True, nogil=True, cache=True)
def _gather_q8(vol, centers, offsets, out):
    n0, n1, n2 = vol.shape
    flat = vol.reshape(-1)
    s0 = n1 * n2
    m = offsets.shape[0]
    lin = offsets[:, 0].astype(np.int64) * s0 + offsets[:, 1].astype(np.int64) * n2 + offsets[:, 2]
    for p in nb.prange(centers.shape[0]):
        c0, c1, c2 = centers[p, 0], centers[p, 1], centers[p, 2]
        base = np.int64(c0) * s0 + np.int64(c1) * n2 + c2
        for k in range(m):
            a = c0 + offsets[k, 0]
            b = c1 + offsets[k, 1]
            c = c2 + offsets[k, 2]
            if 0 <= a < n0 and 0 <= b < n1 and 0 <= c < n2:
                q = (np.int32(flat[base + lin[k]]) + 2) >> 2  # round(HU / 4)
                out[p, k] = min(max(q, -128), 127)
            else:
                out[p, k] = 0


@nb.njit(parallel=True, nogil=True, cache=True)
def _gather_u8(vol, centers, offsets, out):
    n0, n1, n2 = vol.shape
    flat = vol.reshape(-1)
    s0 = n1 * n2
    m = offsets.shape[0]
    lin = offsets[:, 0].astype(np.int64) * s0 + offsets[:, 1].astype(np.int64) * n2 + offsets[:, 2]
    for p in nb.prange(centers.shape[0]):
        c0, c1, c2 = centers[p, 0], centers[p, 1], centers[p, 2]
        base = np.int64(c0) * s0 + np.int64(c1) * n2 + c2
        for k in range(m):
            a = c0 + offsets[k, 0]
            b = c1 + offsets[k, 1]
            c = c2 + offsets[k, 2]
            if 0 <= a < n0 and 0 <= b < n1 and 0 <= c < n2:
                q = (np.int32(flat[base + lin[k]]) + 2) >> 2
                out[p, k] = min(max(q, -128), 127) + 128
            else:
                out[p, k] = 128


def _check(vol, centers_vox, offsets_vox):
    if vol.ndim != 3:
        raise ValueError("gather needs a 3D volume")
    raw = np.asarray(centers_vox).reshape(-1, 3)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.isfinite(raw)) or np.any(raw != np.rint(raw)):
            raise ValueError("query voxels must be integer indices")
    if raw.size and ((raw.min(axis=0) < 0).any() or (raw.max(axis=0) >= vol.shape).any()):
        raise ValueError("query voxels must lie inside the volume")
    return np.ascontiguousarray(raw, dtype=np.int32), np.ascontiguousarray(offsets_vox, dtype=np.int32)


def _check_out(out, centers, offsets, dtype):
    if out.dtype != dtype or out.shape != (centers.shape[0], offsets.shape[0]) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape "
                         f"{(centers.shape[0], offsets.shape[0])}")


def gather(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
           out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) float32 descriptors of the N integer voxels `centers_vox` for the (M, 3) `offsets_vox`."""
    vol = as_hu_int16(volume_hu)
    centers, offsets = _check(vol, centers_vox, offsets_vox)
    if out is None:
        out = np.empty((centers.shape[0], offsets.shape[0]), dtype=np.float32)
    _check_out(out, centers, offsets, np.float32)
    _gather_f32(vol, centers, offsets, out)
    return out


def gather_q8(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) int8 descriptors: value = code / 32 (HU quantised to 4 HU steps)."""
    vol = as_hu_int16(volume_hu)
    centers, offsets = _check(vol, centers_vox, offsets_vox)
    if out is None:
        out = np.empty((centers.shape[0], offsets.shape[0]), dtype=np.int8)
    _check_out(out, centers, offsets, np.int8)
    _gather_q8(vol, centers, offsets, out)
    return out


def gather_u8(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) uint8 descriptors: value = (code - 128) / 32; 128 (value 0) outside the volume."""
    vol = as_hu_int16(volume_hu)
    centers, offsets = _check(vol, centers_vox, offsets_vox)
    if out is None:
        out = np.empty((centers.shape[0], offsets.shape[0]), dtype=np.uint8)
    _check_out(out, centers, offsets, np.uint8)
    _gather_u8(vol, centers, offsets, out)
    return out
