"""What every shipped ONNX model shares: where it lives (the package's models folder, an .onnx file with its
.json card beside it) and how an ONNX Runtime session is opened for it (CPU, all graph optimisations, one
inter-op thread, a clear error for a missing or corrupt file)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def model_paths(name_or_path: str | os.PathLike | None, default: str, kind: str) -> tuple[Path, Path]:
    """(onnx, card) for a shipped model name (default: `default`) or a path to an .onnx file with its .json
    card beside it; `kind` (e.g. "sparse") names the shipped models of that kind in the error."""
    p = Path(name_or_path) if name_or_path is not None else MODELS_DIR / f"{default}.onnx"
    if p.suffix != ".onnx":
        p = MODELS_DIR / f"{p.name}.onnx"
    card = p.with_suffix(".json")
    if not p.exists() or not card.exists():
        shipped = sorted(q.stem for q in MODELS_DIR.glob(f"{kind}_*.onnx"))
        raise ModelError(f"Model {str(name_or_path or default)!r} not found (need {p.name} and {card.name}); "
                         f"shipped {kind} models: {', '.join(shipped) or 'none'}.")
    return p, card


def card_path(name_or_path: str | os.PathLike | None, default: str, kind: str) -> Path:
    """The card of a multi-file model (one .json naming its .onnx files): a shipped model name (default:
    `default`), a folder holding `default`.json, or a path to the .json; `kind` names the shipped ones in the error."""
    p = Path(name_or_path) if name_or_path is not None else MODELS_DIR / f"{default}.json"
    if p.suffix != ".json":
        p = (p / f"{default}.json") if p.is_dir() else MODELS_DIR / f"{p.name}.json"
    if not p.exists():
        raise ModelError(f"{kind} model card {p} not found; shipped: "
                         f"{', '.join(q.stem for q in MODELS_DIR.glob(f'{kind}_*.json')) or 'none'}.")
    return p


def open_session(onnx_path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with `threads` intra-op threads (default: all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors on a missing or corrupt file
        raise ModelError(f"Could not load model {Path(onnx_path).name}: {exc}") from None


def logit_offsets(card: dict, n_classes: int, name: str):
    """The card's per-class logit offsets (`logit_offsets`: one number per network class, added before the
    argmax; fitted on training cases by `training.logit_offsets`) as a (n_classes, 1, 1, 1) float32 array,
    or None when the card has none."""
    import numpy as np

    off = card.get("logit_offsets")
    if off is None:
        return None
    try:
        arr = np.asarray(off, dtype=np.float32)
    except (TypeError, ValueError):
        arr = np.zeros(0, np.float32)
    if arr.shape != (n_classes,) or not np.isfinite(arr).all():
        raise ModelError(f"Model card {name}: logit_offsets must be {n_classes} finite numbers, one per network "
                         f"class.")
    return arr.reshape(-1, 1, 1, 1)
