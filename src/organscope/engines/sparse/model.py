"""The shipped classifier: an ONNX file (descriptors -> probabilities) and its JSON model card."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...sampling.pattern import Pattern, paper_pattern
from ...modelcard import open_session
from ...modelcard import model_paths as _model_paths

DEFAULT_MODEL = "sparse_openkbp"


def model_paths(name_or_path: str | os.PathLike | None) -> tuple[Path, Path]:
    """(onnx, card) for a shipped sparse model name or a path to an .onnx file with its .json card beside it."""
    return _model_paths(name_or_path, DEFAULT_MODEL, "sparse")


def pattern_from_card(card: dict) -> Pattern:
    try:
        pat = card["pattern"]
        pattern = paper_pattern(float(pat["plane_step_mm"]), tuple(float(v) for v in pat["grid_steps_mm"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"The model card's pattern is incomplete or malformed ({exc!r}).") from None
    if pattern.size != card["n_inputs"]:
        raise ModelError(f"Model card pattern has {pattern.size} samples but the network takes {card['n_inputs']}.")
    return pattern


@dataclass
class SparseModel:
    """Runs the classifier with ONNX Runtime on descriptors: uint8 codes for models with an int8 first layer,
    float32 values otherwise (`input_kind`)."""

    onnx_path: Path
    card: dict
    threads: int | None = None

    def __post_init__(self):
        missing = [k for k in ("classes", "n_inputs", "pattern") if k not in self.card]
        if not isinstance(self.card, dict) or missing:
            raise ModelError(f"Model card of {self.onnx_path.name} lacks {', '.join(missing) or 'its fields'}.")

        self._session = open_session(self.onnx_path, self.threads)
        first = self._session.get_inputs()[0]
        self._input = first.name
        #: "codes": uint8 descriptor codes (int8 first layer, see training/quantize.py); "float": float32 values
        self.input_kind = "codes" if first.type == "tensor(uint8)" else "float"
        self.classes: tuple[str, ...] = tuple(self.card["classes"])
        self.pattern = pattern_from_card(self.card)
        self.logit_bias = np.asarray(self.card.get("logit_bias", np.zeros(len(self.classes))), dtype=np.float32)

    @classmethod
    def load(cls, name_or_path=None, *, threads: int | None = None) -> "SparseModel":
        onnx_path, card_path = model_paths(name_or_path)
        try:
            card = json.loads(card_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"Model card {card_path.name} is not valid JSON ({exc}).") from None
        return cls(onnx_path, card, threads)

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
