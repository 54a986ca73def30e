"""Compiled descriptor gather: for many query voxels, read the volume at every pattern offset.

Values are HU / 128 clipped to [-4, 4] (the paper's normalisation); samples outside the volume are 0.
The volume is read as stored (int16 HU): no float copy of the scan is ever made, and no reordering copy
either: the kernels address memory through element strides, so any axis permutation or flip of a contiguous
block (a Fortran-ordered memmap, or its RAS+ view) is read in place.
`gather_q8` gives the same descriptor quantised to int8 (HU / 4, so value = q / 32), for compact
training sets; `gather_u8` the same codes shifted by 128 into uint8 (value = (u - 128) / 32), the input of the
int8 first layer (uint8 x int8 is the fast integer matrix product on x86).

`Sampler` is the hot path for repeated calls on one scan (queries, segmentation): layout and linear offsets
are worked out once, and few points (an interactive click) use a serial kernel, because waking numba's thread
pool costs more than one descriptor (milliseconds when the other core is busy).
"""
from __future__ import annotations

import numba as nb
import numpy as np

HU_SCALE = 128.0
CLIP = 4.0
Q8_PER_UNIT = 32.0  # int8 code = round(value * 32); value in [-4, 4) -> code in [-128, 127]
SERIAL_BELOW = 64   # fewer points than this: serial kernel (no thread-pool wake-up)

KIND_F32, KIND_Q8, KIND_U8 = 0, 1, 2
_DTYPES = {KIND_F32: np.float32, KIND_Q8: np.int8, KIND_U8: np.uint8}


def as_hu_int16(array: np.ndarray) -> np.ndarray:
    """The volume as a C-contiguous int16 HU array (no copy when it already is one)."""
    a = np.asarray(array)
    if a.dtype == np.int16 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(hu_int16(a))


def hu_int16(array: np.ndarray) -> np.ndarray:
    """The volume as int16 HU in a layout the kernels read in place (see `strided_layout`): no copy for int16
    data stored in any axis order, a converted copy in the same memory order otherwise."""
    a = np.asarray(array)
    if a.dtype != np.int16:
        if np.issubdtype(a.dtype, np.floating):
            a = np.rint(np.clip(a, -32768, 32767))
        a = np.clip(a, -32768, 32767).astype(np.int16, order="K")
    if strided_layout(a) is None:  # e.g. a sub-block with gaps between rows
        a = np.ascontiguousarray(a)
    return a


def strided_layout(vol: np.ndarray):
    """(flat, base, strides) such that vol[i, j, k] == flat[base + i*strides[0] + j*strides[1] + k*strides[2]],
    with `flat` a 1-D view of vol's memory (no copy); None when vol does not fill a contiguous block (then it
    must be copied). Strides are in elements and may be negative (flipped axes)."""
    item = vol.itemsize
    if vol.ndim != 3 or any(s % item for s in vol.strides):
        return None
    strides = np.array([s // item for s in vol.strides], dtype=np.int64)
    pos = vol[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in strides)]
    block = pos.transpose(np.argsort(-np.abs(strides), kind="stable"))
    if block.flags.c_contiguous:
        flat = block.reshape(-1)  # a view
    else:  # a sub-block (padded rows, a crop): address the whole allocation it lives in
        root = vol
        while isinstance(root.base, np.ndarray):
            root = root.base
        if not root.flags.c_contiguous or root.dtype != vol.dtype:
            return None
        flat = root.reshape(-1)
    base = (vol.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
    return flat, int(base), strides


@nb.njit(nogil=True, cache=True, inline="always")
def _point(flat, start, c0, c1, c2, n0, n1, n2, offsets, lin, out, p, kind):
    """Descriptor of one voxel into out[p]; `kind` is loop-invariant (hoisted by the compiler)."""
    for k in range(offsets.shape[0]):
        a = c0 + offsets[k, 0]
        b = c1 + offsets[k, 1]
        c = c2 + offsets[k, 2]
        if 0 <= a < n0 and 0 <= b < n1 and 0 <= c < n2:
            hu = np.int32(flat[start + lin[k]])
            if kind == 0:
                out[p, k] = min(max(hu * (1.0 / 128.0), -4.0), 4.0)
            elif kind == 1:
                out[p, k] = min(max((hu + 2) >> 2, -128), 127)  # round(HU / 4)
            else:
                out[p, k] = min(max((hu + 2) >> 2, -128), 127) + 128
        else:
            out[p, k] = 128 if kind == 2 else 0


@nb.njit(parallel=True, nogil=True, cache=True)
def _gather_parallel(flat, base, strides, shape, centers, offsets, lin, out, kind):
    for p in nb.prange(centers.shape[0]):
        c0, c1, c2 = centers[p, 0], centers[p, 1], centers[p, 2]
        start = base + c0 * strides[0] + c1 * strides[1] + c2 * strides[2]
        _point(flat, start, c0, c1, c2, shape[0], shape[1], shape[2], offsets, lin, out, p, kind)


@nb.njit(nogil=True, cache=True)
def _gather_serial(flat, base, strides, shape, centers, offsets, lin, out, kind):
    for p in range(centers.shape[0]):
        c0, c1, c2 = centers[p, 0], centers[p, 1], centers[p, 2]
        start = base + c0 * strides[0] + c1 * strides[1] + c2 * strides[2]
        _point(flat, start, c0, c1, c2, shape[0], shape[1], shape[2], offsets, lin, out, p, kind)


@nb.njit(parallel=True, nogil=True, cache=True)
def _blocked_copy(src, dst):
    """dst[...] = src[...] in 16^3 tiles, so that a transposed/flipped source is read and written a cache line
    at a time (numpy's element-wise strided copy of a transposed 512x512x300 scan takes ~1.2 s, this ~0.2 s)."""
    n0, n1, n2 = dst.shape
    b = 16
    for t in nb.prange((n0 + b - 1) // b):
        for j0 in range(0, n1, b):
            for k0 in range(0, n2, b):
                for i in range(t * b, min(t * b + b, n0)):
                    for j in range(j0, min(j0 + b, n1)):
                        for k in range(k0, min(k0 + b, n2)):
                            dst[i, j, k] = src[i, j, k]


BLOCKED_COPY_ABOVE = 16_000_000  # voxels: numpy's own copy below (10-40 ms at native OpenKBP sizes, no compile)


def contiguous_int16(view: np.ndarray) -> np.ndarray:
    """A C-contiguous int16 copy of a (permuted/flipped) int16 view, in tiles (fast for transposes).

    Why copy at all: the gather reads ~6561 scattered voxels per point, and on a 512x512 scan stored
    Fortran-ordered (as NIfTI files are) reading the RAS+ view in place measured ~1.6x slower per point than
    reading a C-ordered RAS+ copy (55 vs 90 us/pt); the tiled copy costs ~0.2 s, the time of ~3k points."""
    a = hu_int16(view)
    if a.flags.c_contiguous:
        return a
    if a.size <= BLOCKED_COPY_ABOVE:  # compiling the tiled kernel (~1.2 s on first use) would cost more
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, dtype=np.int16)
    _blocked_copy(a, out)
    return out


class Sampler:
    """Descriptors of one volume for one set of voxel offsets, for many calls: checks and layout once.

    `__call__` trusts its input (int32 C-contiguous (N, 3) voxels inside the volume, a C-contiguous `out` of
    the right dtype and shape): it is the inner loop of queries and segmentation, which check points first."""

    def __init__(self, volume_hu: np.ndarray, offsets_vox: np.ndarray, kind: int = KIND_F32):
        self.volume = hu_int16(volume_hu)
        if self.volume.ndim != 3:
            raise ValueError("gather needs a 3D volume")
        self.flat, self.base, self.strides = strided_layout(self.volume)
        self.shape = np.array(self.volume.shape, dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets_vox, dtype=np.int32).reshape(-1, 3)
        self.lin = self.offsets.astype(np.int64) @ self.strides  # memory offset of each sample
        self.kind = int(kind)
        self.dtype = _DTYPES[self.kind]

    def __call__(self, centers: np.ndarray, out: np.ndarray) -> np.ndarray:
        fn = _gather_serial if centers.shape[0] < SERIAL_BELOW else _gather_parallel
        fn(self.flat, self.base, self.strides, self.shape, centers, self.offsets, self.lin, out, self.kind)
        return out


@nb.njit(nogil=True, cache=True, inline="always")
def _copy_codes(codes, start, lin, out, p):
    for k in range(lin.shape[0]):
        out[p, k] = codes[start + lin[k]]


@nb.njit(parallel=True, nogil=True, cache=True)
def _codes_parallel(codes, strides, centers, lin, out):
    for p in nb.prange(centers.shape[0]):
        _copy_codes(codes, centers[p, 0] * strides[0] + centers[p, 1] * strides[1] + centers[p, 2] * strides[2],
                    lin, out, p)


@nb.njit(nogil=True, cache=True)
def _codes_serial(codes, strides, centers, lin, out):
    for p in range(centers.shape[0]):
        _copy_codes(codes, centers[p, 0] * strides[0] + centers[p, 1] * strides[1] + centers[p, 2] * strides[2],
                    lin, out, p)


class CodeSampler:
    """`Sampler` for uint8 codes (KIND_U8) from a copy of the volume made of codes and padded with 128 (the code
    of a sample outside the volume) by the pattern's reach on every side: a descriptor is then 6561 plain byte
    loads, with no bounds test and no conversion per sample, from a volume half the size of the int16 one
    (so twice the voxels per cache line). Same values as `Sampler(..., KIND_U8)`; the padded copy costs one pass
    over the volume and (n0 + 2 r0)(n1 + 2 r1)(n2 + 2 r2) bytes, r the pattern's reach in voxels (~17 MB for a
    128 x 128 x 180 working grid and the paper's pattern).

    Attributes the compiled click path reads: `codes` (the padded volume, flat), `strides` (of its axes, in
    elements) and `lin` (where each offset's sample lies in `codes`, counted from the centre voxel's
    `c . strides`, the padding included), so sample k of centre c is codes[c . strides + lin[k]]."""

    kind = KIND_U8
    dtype = np.uint8

    def __init__(self, volume_hu: np.ndarray, offsets_vox: np.ndarray):
        vol = hu_int16(volume_hu)
        if vol.ndim != 3:
            raise ValueError("gather needs a 3D volume")
        self.shape = np.array(vol.shape, dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets_vox, dtype=np.int32).reshape(-1, 3)
        lo = np.maximum(0, -self.offsets.min(axis=0)) if len(self.offsets) else np.zeros(3, np.int64)
        hi = np.maximum(0, self.offsets.max(axis=0)) if len(self.offsets) else np.zeros(3, np.int64)
        padded = np.full(tuple(int(n) for n in self.shape + lo + hi), 128, dtype=np.uint8)
        inner = padded[lo[0]:lo[0] + vol.shape[0], lo[1]:lo[1] + vol.shape[1], lo[2]:lo[2] + vol.shape[2]]
        for a in range(vol.shape[0]):  # numpy, a plane at a time (no int32 copy of the whole volume); the code of
            # _point: round(HU / 4) clipped to int8, + 128
            plane = (vol[a].astype(np.int32) + 2) >> 2
            np.clip(plane, -128, 127, out=plane)
            plane += 128
            inner[a] = plane
        self.codes = padded.reshape(-1)
        self.strides = np.array([padded.strides[0], padded.strides[1], 1], dtype=np.int64)
        origin = int(lo @ self.strides)  # where voxel (0, 0, 0) of the volume lies in `codes`
        lin = origin + self.offsets.astype(np.int64) @ self.strides
        self.lin = lin.astype(np.int32) if padded.size < 2 ** 31 else lin

    def __call__(self, centers: np.ndarray, out: np.ndarray) -> np.ndarray:
        fn = _codes_serial if centers.shape[0] < SERIAL_BELOW else _codes_parallel
        fn(self.codes, self.strides, centers, self.lin, out)
        return out


def make_sampler(volume_hu: np.ndarray, offsets_vox: np.ndarray, kind: int = KIND_F32):
    """The sampler for descriptors of `kind`: CodeSampler for uint8 codes, Sampler otherwise."""
    return CodeSampler(volume_hu, offsets_vox) if kind == KIND_U8 else Sampler(volume_hu, offsets_vox, kind)


def _check(vol, centers_vox):
    if vol.ndim != 3:
        raise ValueError("gather needs a 3D volume")
    raw = np.asarray(centers_vox).reshape(-1, 3)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.isfinite(raw)) or np.any(raw != np.rint(raw)):
            raise ValueError("query voxels must be integer indices")
    if raw.size and ((raw.min(axis=0) < 0).any() or (raw.max(axis=0) >= vol.shape).any()):
        raise ValueError("query voxels must lie inside the volume")
    return np.ascontiguousarray(raw, dtype=np.int32)


def _gather(volume_hu, centers_vox, offsets_vox, out, kind):
    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise ValueError("gather needs a 3D volume")
    sampler = Sampler(vol, offsets_vox, kind)
    centers = _check(sampler.volume, centers_vox)
    shape = (centers.shape[0], sampler.offsets.shape[0])
    if out is None:
        out = np.empty(shape, dtype=sampler.dtype)
    if out.dtype != sampler.dtype or out.shape != shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(sampler.dtype).name} array of shape {shape}")
    return sampler(centers, out)


def gather(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
           out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) float32 descriptors of the N integer voxels `centers_vox` for the (M, 3) `offsets_vox`."""
    return _gather(volume_hu, centers_vox, offsets_vox, out, KIND_F32)


def gather_q8(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) int8 descriptors: value = code / 32 (HU quantised to 4 HU steps)."""
    return _gather(volume_hu, centers_vox, offsets_vox, out, KIND_Q8)


def gather_u8(volume_hu: np.ndarray, centers_vox: np.ndarray, offsets_vox: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """(N, M) uint8 descriptors: value = (code - 128) / 32; 128 (value 0) outside the volume."""
    return _gather(volume_hu, centers_vox, offsets_vox, out, KIND_U8)
