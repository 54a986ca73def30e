"""Shared fixtures: the SYNTHETIC analytic test model (tests/helpers/synthetic.py) and phantoms stored in
several orientations. Nothing here uses a shipped (trained) model."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import synthetic as syn

# name -> (perm, flips) of the RAS grid's axes; "oblique" is handled apart
ORIENTATIONS = {
    "RAS": ((0, 1, 2), (0, 0, 0)),
    "LPS": ((0, 1, 2), (1, 1, 0)),
    "PLI": ((1, 0, 2), (1, 1, 1)),  # OpenKBP's storage order
}


@pytest.fixture(scope="session")
def synthetic_model_path(tmp_path_factory):
    """Path of the synthetic analytic test model (.onnx, with its .json card beside it)."""
    pytest.importorskip("onnx")
    return syn.build_model(tmp_path_factory.mktemp("model") / f"{syn.MODEL_NAME}.onnx")


@pytest.fixture(scope="session")
def synthetic_engine(synthetic_model_path):
    from organscope.engines.sparse import SparseEngine, SparseModel

    return SparseEngine(model=SparseModel.load(synthetic_model_path, threads=1))


@pytest.fixture(scope="session")
def phantoms():
    """name -> Volume of the same analytic phantom on RAS, LPS, PLI (same voxel centres) and oblique grids."""
    from organscope.volume import Volume

    ras_aff = syn.ras_affine()
    out = {}
    for name, (perm, flips) in ORIENTATIONS.items():
        aff, shape = syn.reoriented(ras_aff, syn.SHAPE, perm, flips)
        out[name] = Volume(syn.phantom(aff, shape), aff)
    obl = syn.oblique_affine(20.0)
    out["oblique"] = Volume(syn.phantom(obl), obl)
    return out


@pytest.fixture(scope="session")
def phantom_files(phantoms, tmp_path_factory):
    """name -> .nii.gz path of each phantom."""
    d = tmp_path_factory.mktemp("phantoms")
    return {name: syn.save_nifti(d / f"phantom_{name}.nii.gz", v.array, v.affine) for name, v in phantoms.items()}


@pytest.fixture(scope="session")
def segmentations(synthetic_engine, phantoms):
    """name -> Segmentation of each phantom by the synthetic model (computed once)."""
    return {name: synthetic_engine.segment(v) for name, v in phantoms.items()}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
