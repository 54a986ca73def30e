"""A SYNTHETIC test model and analytic phantoms, so that engine outcomes can be predicted exactly.

The model ("synthetic_analytic_test_model") has the shipped model's interface: input "descriptors"
float32 [n, 6561] -> output "logits" float32 [n, 4], plus a JSON card. Its weights are written by hand:
with x = the descriptor's centre sample (offset (0, 0, 0)) and s = the sample 8 mm superior (offset
(0, 0, +8) mm), both in the descriptor's units (HU / 128, clipped to +-4), the logits are

    background  0
    bone        K * (x - BONE)                        > 0 iff HU(centre) > 300
    fat         K * min(x - FAT_LO, FAT_HI - x)       > 0 iff -500 < HU(centre) < -50
    below_bone  K * min(s - BONE, BONE - x) - 1       > 0 iff HU(8 mm above) > 300 and HU(centre) < 300

(the -1 is the card's logit_bias, which breaks the bone/below_bone tie in top-3 lists). "below_bone" is
there to check the *direction* of descriptor offsets through every orientation: it labels the cap just
under a bright sphere, never the one above it.

Phantoms are defined in world (RAS mm) coordinates, so any grid (RAS, LPS, PLI, oblique) sampling them
shows the same anatomy at the same world points.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_NAME = "synthetic_analytic_test_model"
CLASSES = ("background", "bone", "fat", "below_bone")
LOGIT_BIAS = (0.0, 0.0, 0.0, -1.0)
K = 20.0
BONE = 300.0 / 128
FAT_LO = -500.0 / 128
FAT_HI = -50.0 / 128
UP_MM = 8.0

AIR_HU, WATER_HU, BONE_HU, FAT_HU = -1000, 30, 700, -100


def _pattern():
    from organscope.sampling.pattern import paper_pattern

    return paper_pattern(4.0, (2.0, 3.0, 5.0, 12.0, 28.0, 64.0))


def analytic_logits(center_hu, up_hu) -> np.ndarray:
    """Numpy reference of the synthetic model (bias included), for expected values in tests."""
    x = np.clip(np.asarray(center_hu, float) / 128, -4, 4)
    s = np.clip(np.asarray(up_hu, float) / 128, -4, 4)
    z = np.stack([np.zeros_like(x), K * (x - BONE), K * np.minimum(x - FAT_LO, FAT_HI - x),
                  K * np.minimum(s - BONE, BONE - x)], axis=-1)
    return z + np.asarray(LOGIT_BIAS)


def build_model(onnx_path: Path) -> Path:
    """Write the synthetic ONNX model and its card (same stem, .json) and return the .onnx path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pat = _pattern()
    centre = np.flatnonzero(np.all(pat.offsets_mm == 0, axis=1))
    up = np.flatnonzero(np.all(pat.offsets_mm == [0, 0, UP_MM], axis=1))
    assert len(centre) == 9 and len(up) == 3, (len(centre), len(up))
    mid = (FAT_LO + FAT_HI) / 2
    # hidden unit j = relu(a_j * x + c_j * s + b_j); x, s = mean of their (identical) samples
    units = [(1, 0, -BONE), (-1, 0, BONE),            # h0 - h1 = x - BONE
             (1, 0, -FAT_LO), (-1, 0, FAT_LO),        # h2 - h3 = x - FAT_LO
             (1, 0, -mid),                            # x - FAT_LO - 2 relu(x - mid) = min(x - FAT_LO, FAT_HI - x)
             (0, 1, -BONE), (0, -1, BONE),            # h5 - h6 = s - BONE
             (1, 1, -2 * BONE)]                       # (s - BONE) - relu(s + x - 2 BONE) = min(s - BONE, BONE - x)
    w1 = np.zeros((pat.size, len(units)), np.float32)
    b1 = np.zeros(len(units), np.float32)
    for j, (a, c, b) in enumerate(units):
        w1[centre, j] = a / len(centre)
        w1[up, j] += c / len(up)
        b1[j] = b
    w2 = np.zeros((len(units), len(CLASSES)), np.float32)
    w2[[0, 1], 1] = [K, -K]
    w2[[2, 3, 4], 2] = [K, -K, -2 * K]
    w2[[5, 6, 7], 3] = [K, -K, -K]
    b2 = np.zeros(len(CLASSES), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["descriptors", "w1", "b1"], ["z1"]),
         helper.make_node("Relu", ["z1"], ["h1"]),
         helper.make_node("Gemm", ["h1", "w2", "b2"], ["logits"])],
        MODEL_NAME,
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", pat.size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(CLASSES)])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="organscope-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_path = Path(onnx_path)
    onnx.save(model, str(onnx_path))
    card = {
        "name": MODEL_NAME,
        "engine": "sparse",
        "description": "SYNTHETIC analytic test model (hand-set weights), not trained on any data.",
        "classes": list(CLASSES),
        "n_inputs": pat.size,
        "pattern": {"plane_step_mm": 4.0, "grid_steps_mm": [2, 3, 5, 12, 28, 64]},
        "logit_bias": list(LOGIT_BIAS),
        "segmentation": {"levels_mm": [8.0, 4.0, 2.0], "majority": 20, "batch": 4096},
    }
    onnx_path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return onnx_path


# ---- geometry --------------------------------------------------------------------------------------

SPACING_MM = np.array([0.8, 1.3, 2.5])
# A shape for which every level of the 8/4/2 mm schedule tiles the grid (see test_refine's xfail).
SHAPE = (120, 72, 38)
CENTER_MM = np.array([10.0, -20.0, 30.0])   # world position of the grid centre


def ras_affine(shape=SHAPE, spacing_mm=SPACING_MM, center_mm=CENTER_MM) -> np.ndarray:
    a = np.diag(list(spacing_mm) + [1.0])
    a[:3, 3] = np.asarray(center_mm) - (np.asarray(shape) - 1) / 2 * np.asarray(spacing_mm)
    return a


def reoriented(ras_aff: np.ndarray, ras_shape, perm, flips) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of a grid holding the *same voxel centres* as the RAS grid, whose array axis a
    runs along RAS axis perm[a], reversed if flips[a]. Written by hand (not with nibabel) on purpose."""
    ras_shape = np.asarray(ras_shape)
    aff = np.eye(4)
    origin = ras_aff[:3, 3].copy()
    for a, (ax, flip) in enumerate(zip(perm, flips)):
        col = ras_aff[:3, ax].copy()
        if flip:
            origin += (ras_shape[ax] - 1) * col
            col = -col
        aff[:3, a] = col
    aff[:3, 3] = origin
    return aff, tuple(int(ras_shape[ax]) for ax in perm)


def reorient_array(ras_array: np.ndarray, perm, flips) -> np.ndarray:
    out = np.transpose(ras_array, perm)
    for a, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out)


ALL_ORIENTATIONS = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((0, 1), repeat=3)]


def rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def oblique_affine(deg=20.0, shape=SHAPE, spacing_mm=SPACING_MM, center_mm=CENTER_MM) -> np.ndarray:
    """RAS grid rotated by `deg` about z around the grid centre."""
    a = np.eye(4)
    a[:3, :3] = rotation_z(deg) @ np.diag(spacing_mm)
    a[:3, 3] = np.asarray(center_mm) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return a


def voxel_world(affine: np.ndarray, shape) -> np.ndarray:
    """(i, j, k, 3) world positions of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


# ---- the phantom ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sphere:
    center_mm: np.ndarray
    radius_mm: float
    hu: int


BODY = Sphere(CENTER_MM, 42.0, WATER_HU)
BONE_SPHERE = Sphere(CENTER_MM + np.array([14.0, -9.0, 11.0]), 13.0, BONE_HU)
FAT_SPHERE = Sphere(CENTER_MM + np.array([-16.0, 12.0, -12.0]), 11.0, FAT_HU)


def phantom_hu(world: np.ndarray) -> np.ndarray:
    """int16 HU at world points (..., 3): air, a water-like body ball, an off-centre bone ball and a fat ball."""
    out = np.full(world.shape[:-1], AIR_HU, np.int16)
    for s in (BODY, BONE_SPHERE, FAT_SPHERE):
        out[np.linalg.norm(world - s.center_mm, axis=-1) <= s.radius_mm] = s.hu
    return out


def phantom(affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    return phantom_hu(voxel_world(affine, shape))


def expected_label(world: np.ndarray, margin_mm: float) -> np.ndarray:
    """Label the synthetic model must give at world points (..., 3), or -1 within margin_mm of an edge
    (where a coarse-to-fine segmentation is free to go either way)."""
    out = np.full(world.shape[:-1], -1, np.int16)
    d_bone = np.linalg.norm(world - BONE_SPHERE.center_mm, axis=-1) - BONE_SPHERE.radius_mm
    d_fat = np.linalg.norm(world - FAT_SPHERE.center_mm, axis=-1) - FAT_SPHERE.radius_mm
    up = world + np.array([0, 0, UP_MM])
    d_up = np.linalg.norm(up - BONE_SPHERE.center_mm, axis=-1) - BONE_SPHERE.radius_mm
    out[(d_bone > margin_mm) & (d_fat > margin_mm) & (d_up > margin_mm)] = 0
    out[d_bone < -margin_mm] = 1
    out[d_fat < -margin_mm] = 2
    out[(d_up < -margin_mm) & (d_bone > margin_mm)] = 3
    return out


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return Path(path)
