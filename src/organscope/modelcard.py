"""What every shipped model shares: where it lives (the package's models folder, an .onnx file with its .json
card beside it), its model card (a frozen, typed object validated once when read: an error names the bad field),
and how an ONNX Runtime session is opened for it (CPU, all graph optimisations, one inter-op thread, a clear
error for a missing or corrupt file).

Each engine subclasses `ModelCard` with the fields it reads; a field is declared with `card_field`, which says
how the JSON value is checked and converted:

    @dataclass(frozen=True)
    class Cnn3dCard(ModelCard):
        grid: tuple[int, int, int] = card_field(parse=positive_ints(3))
        windows_hu: tuple = card_field(parse=windows_hu, default=WINDOWS_HU)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

from .errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent / "models"
_REQUIRED = object()
C = TypeVar("C", bound="ModelCard")


class CardFieldError(ValueError):
    """A card value that does not have the form its field needs (the message says which form)."""


def card_field(*, parse: Callable[[Any], Any] | None = None, default: Any = _REQUIRED, key: str | None = None):
    """A card field: `parse` checks and converts the JSON value (raising CardFieldError, TypeError or ValueError
    when it has the wrong form), `default` is used when the card lacks the key (required when not given), `key`
    is the JSON key when it differs from the field name."""
    meta = {"parse": parse, "key": key, "required": default is _REQUIRED}
    if default is _REQUIRED:
        return field(default=None, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


# ---- parsers: JSON value -> checked Python value ---------------------------------------------------------------

def positive_ints(n: int):
    def parse(v):
        out = tuple(int(x) for x in v)
        if len(out) != n or min(out) < 1 or any(float(x) != int(x) for x in v):
            raise CardFieldError(f"must be {n} positive integers")
        return out
    return parse


def finite_float(v) -> float:
    out = float(v)
    if not math.isfinite(out) or isinstance(v, bool):
        raise CardFieldError("must be a finite number")
    return out


def finite_floats(v) -> tuple[float, ...]:
    return tuple(finite_float(x) for x in v)


def boolean(v) -> bool:
    if not isinstance(v, bool):
        raise CardFieldError("must be true or false")
    return v


def names(v) -> tuple[str, ...]:
    if isinstance(v, str) or not all(isinstance(x, str) and x for x in v):
        raise CardFieldError("must be a list of names")
    return tuple(v)


def one_of(*choices: str):
    def parse(v):
        if v not in choices:
            raise CardFieldError(f"must be one of {', '.join(choices)}")
        return v
    return parse


def windows_hu(v) -> tuple[tuple[float, float], ...]:
    """[[level, width], ...] in HU, widths positive."""
    out = tuple((finite_float(level), finite_float(width)) for level, width in v)
    if not out or any(w <= 0 for _, w in out):
        raise CardFieldError("must be [level, width] pairs in HU with positive widths")
    return out


def _frozen(v):
    if isinstance(v, dict):
        return MappingProxyType({k: _frozen(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    return v


@dataclass(frozen=True)
class ModelCard:
    """The fields every card has: where it was read from, the engine it is for, the whole document (read-only,
    for figures no engine reads: validation scores, training notes) and its date. Subclasses add typed fields."""

    path: Path
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    engine: str | None = card_field(default=None)
    date: str | None = card_field(default=None)

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read and validate the card at `path` (one ModelError naming the file and the field on any problem)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"Model card {path.name} cannot be read as JSON ({exc}).") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], path: str | os.PathLike = Path("<card>")) -> C:
        path = Path(path)
        if not isinstance(data, Mapping):
            raise ModelError(f"Model card {path.name} must hold a JSON object.")
        values: dict[str, Any] = {"path": path, "raw": _frozen(dict(data))}
        for f in dataclasses.fields(cls):
            if f.name in values or not f.metadata:
                continue
            key = f.metadata["key"] or f.name
            if key not in data or data[key] is None:
                if f.metadata["required"]:
                    raise ModelError(f"Model card {path.name} lacks the field {key!r}.")
                continue  # the dataclass default
            parse = f.metadata["parse"]
            try:
                values[f.name] = parse(data[key]) if parse else data[key]
            except (CardFieldError, TypeError, ValueError, KeyError) as exc:
                why = str(exc) if isinstance(exc, CardFieldError) else "has the wrong form"
                raise ModelError(f"Model card {path.name}: field {key!r} {why} (got {_short(data[key])}).") from None
        card = cls(**values)
        card.check()
        return card

    def check(self) -> None:
        """Checks across fields (a subclass raises ModelError naming them); called once after parsing."""

    def get(self, key: str, default=None):
        """A value of the card's document that no field declares (figures, notes)."""
        return self.raw.get(key, default)

    @property
    def validation(self) -> Mapping[str, Any]:
        return self.raw.get("validation", MappingProxyType({}))


def _short(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


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
