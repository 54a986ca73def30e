"""The shipped classifier: an ONNX file (descriptors -> probabilities) and its model card (`card.SparseCard`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...modelcard import open_session
from ...modelcard import model_paths as _model_paths
from .card import SparseCard

DEFAULT_MODEL = "sparse_openkbp"


def model_paths(name_or_path: str | os.PathLike | None) -> tuple[Path, Path]:
    """(onnx, card) for a shipped sparse model name or a path to an .onnx file with its .json card beside it."""
    return _model_paths(name_or_path, DEFAULT_MODEL, "sparse")


@dataclass
class SparseModel:
    """Runs the classifier with ONNX Runtime on descriptors: uint8 codes for models with an int8 first layer,
    float32 values otherwise (`input_kind`). `card` is the model's SparseCard, or the card's JSON object (a
    trainer's card not yet written: it is validated here, as a card file would be)."""

    onnx_path: Path
    card: SparseCard | Mapping[str, Any]
    threads: int | None = None

    def __post_init__(self):
        self.onnx_path = Path(self.onnx_path)
        if not isinstance(self.card, SparseCard):
            self.card = SparseCard.from_dict(self.card, self.onnx_path.with_suffix(".json"))
        self._session = open_session(self.onnx_path, self.threads)
        first = self._session.get_inputs()[0]
        self._input = first.name
        #: "codes": uint8 descriptor codes (int8 first layer, see training/quantize.py); "float": float32 values
        self.input_kind = "codes" if first.type == "tensor(uint8)" else "float"
        self.classes: tuple[str, ...] = self.card.classes
        self.pattern = self.card.make_pattern()
        bias = self.card.logit_bias
        self.logit_bias = np.asarray(bias if bias is not None else np.zeros(len(self.classes)), dtype=np.float32)

    @classmethod
    def load(cls, name_or_path=None, *, threads: int | None = None) -> "SparseModel":
        onnx_path, card_path = model_paths(name_or_path)
        return cls(onnx_path, SparseCard.load(card_path), threads)

    def logits(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, M) descriptors (uint8 codes or float32 values, as `input_kind` says) -> (N, C) calibrated logits
        (network output + the card's class bias)."""
        return self._session.run(None, {self._input: descriptors})[0] + self.logit_bias

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, M) descriptors -> (N, C) probabilities."""
        z = self.logits(descriptors)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
