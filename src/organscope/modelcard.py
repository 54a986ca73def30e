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
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from .errors import ModelError

if TYPE_CHECKING:
    import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "models"
_REQUIRED = object()
C = TypeVar("C", bound="ModelCard")


class CardFieldError(ValueError):
    """A card value that does not have the form its field needs (the message says which form). Raised inside a
    field's JSON object (a cascade group, a slice2d organ), `at` is the path below the field ("midline.crop"),
    `value` the offending part, and `missing` says that part is absent."""

    def __init__(self, message: str = "has the wrong form", *, at: str | None = None, value: Any = _REQUIRED,
                 missing: bool = False):
        super().__init__(message)
        self.at, self.value, self.missing = at, value, missing

    def below(self, key: str, value: Any) -> "CardFieldError":
        """The same error one level further out: inside the entry `key` (whose JSON value is `value`)."""
        return CardFieldError(str(self), at=key if self.at is None else f"{key}.{self.at}",
                              value=value if self.value is _REQUIRED else self.value, missing=self.missing)


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

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sequence(v, form: str) -> Sequence:
    """v when it is a JSON list (a string or an object is refused with `form`, the form the field needs)."""
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Sequence):
        raise CardFieldError(form)
    return v


def positive_ints(n: int):
    def parse(v):
        form = f"must be {n} positive integers"
        v = _sequence(v, form)
        if len(v) != n or not all(_is_number(x) and math.isfinite(x) and x == int(x) and x >= 1 for x in v):
            raise CardFieldError(form)
        return tuple(int(x) for x in v)
    return parse


def spacings_mm(v) -> tuple:
    """3 spacings in mm (canonical x, y, z), each a positive number (fixed) or [lo, hi] (a range, lo <= hi)."""
    form = "must be 3 spacings in mm, each a positive number or [lo, hi]"
    v = _sequence(v, form)
    out = []
    for x in v:
        if _is_number(x) and math.isfinite(x) and x > 0:
            out.append(float(x))
            continue
        if isinstance(x, (str, bytes, Mapping)) or not isinstance(x, Sequence) or len(x) != 2 or not all(
                _is_number(y) and math.isfinite(y) and y > 0 for y in x) or x[0] > x[1]:
            raise CardFieldError(form)
        out.append((float(x[0]), float(x[1])))
    if len(out) != 3:
        raise CardFieldError(form)
    return tuple(out)


def positive_mm3(v) -> tuple[float, float, float]:
    """3 positive spacings in mm (canonical x, y, z)."""
    form = "must be 3 positive spacings in mm"
    v = _sequence(v, form)
    if len(v) != 3 or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in v):
        raise CardFieldError(form)
    return tuple(float(x) for x in v)


def finite_float(v) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise CardFieldError("must be a finite number")
    return float(v)


def finite_floats(v) -> tuple[float, ...]:
    v = _sequence(v, "must be a list of finite numbers")
    if not all(_is_number(x) and math.isfinite(x) for x in v):
        raise CardFieldError("must be a list of finite numbers")
    return tuple(float(x) for x in v)


def boolean(v) -> bool:
    if not isinstance(v, bool):
        raise CardFieldError("must be true or false")
    return v


def names(v) -> tuple[str, ...]:
    v = _sequence(v, "must be a list of names")
    if not all(isinstance(x, str) and x for x in v):
        raise CardFieldError("must be a list of names")
    return tuple(v)


def one_of(*choices: str):
    def parse(v):
        if v not in choices:
            raise CardFieldError(f"must be one of {', '.join(choices)}")
        return v
    return parse


def positive_int(v) -> int:
    if not _is_number(v) or not math.isfinite(v) or v != int(v) or v < 1:
        raise CardFieldError("must be a positive integer")
    return int(v)


def non_negative_int(v) -> int:
    if not _is_number(v) or not math.isfinite(v) or v != int(v) or v < 0:
        raise CardFieldError("must be a whole number, 0 or more")
    return int(v)


def non_negative_float(v) -> float:
    out = finite_float(v)
    if out < 0:
        raise CardFieldError("must be a finite number, 0 or more")
    return out


def text(v) -> str:
    if not isinstance(v, str) or not v:
        raise CardFieldError("must be a non-empty string")
    return v


def windows_hu(v) -> tuple[tuple[float, float], ...]:
    """[[level, width], ...] in HU, widths positive."""
    v = _sequence(v, "must be [level, width] pairs in HU with positive widths")
    out = tuple((finite_float(level), finite_float(width)) for level, width in v)
    if not out or any(w <= 0 for _, w in out):
        raise CardFieldError("must be [level, width] pairs in HU with positive widths")
    return out


def hu_range(v) -> tuple[float, float]:
    """[low, high] in HU, high above low (a window given by its ends)."""
    low, high = (finite_float(x) for x in _sequence(v, "must be [low, high] in HU with high above low"))
    if high <= low:
        raise CardFieldError("must be [low, high] in HU with high above low")
    return low, high


def json_object(v) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise CardFieldError("must be a JSON object")
    return v


def entry(obj: Mapping[str, Any], key: str, parse: Callable[[Any], Any] | None = None, default: Any = _REQUIRED):
    """obj[key] parsed (inside a field's JSON object, e.g. one cascade group): `default` when absent or null
    (required when not given); an error names the key (CardFieldError.at) for the card's message."""
    if key not in obj or obj[key] is None:
        if default is _REQUIRED:
            raise CardFieldError("is missing", at=key, missing=True)
        return default
    try:
        return parse(obj[key]) if parse else obj[key]
    except CardFieldError as exc:
        raise exc.below(key, obj[key]) from None
    except (TypeError, ValueError, KeyError):
        raise CardFieldError(at=key, value=obj[key]) from None


def named_entries(parse_one: Callable[[str, Mapping[str, Any]], Any]):
    """A JSON object {name: {...}, ...} (cascade groups, slice2d organs) -> a tuple of parse_one(name, object),
    in the card's order; an error names the entry."""
    def parse(v) -> tuple:
        out = []
        for name, spec in json_object(v).items():
            try:
                out.append(parse_one(name, json_object(spec)))
            except CardFieldError as exc:
                raise exc.below(name, spec) from None
            except (TypeError, ValueError, KeyError):
                raise CardFieldError(at=name, value=spec) from None
        if not out:
            raise CardFieldError("must name at least one entry")
        return tuple(out)
    return parse


def offsets_array(offsets) -> "np.ndarray | None":
    """Per-class logit offsets (one number per network class, added to its scores before the argmax or softmax;
    fitted on training cases by `training.logit_offsets`) as a (n, 1, 1, 1) float32 array, or None."""
    import numpy as np

    if offsets is None:
        return None
    return np.asarray(offsets, np.float32).reshape(-1, 1, 1, 1)


def _frozen(v):
    if isinstance(v, dict):
        return MappingProxyType({k: _frozen(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    return v


BODY_REGIONS = ("head-and-neck", "thorax", "abdomen", "pelvis", "whole-body")


def probability(v) -> float:
    if not (_is_number(v) and 0.0 < v < 1.0):
        raise CardFieldError("must be a number between 0 and 1")
    return float(v)


def _body_region(v) -> str:
    if v not in BODY_REGIONS:
        raise CardFieldError(f"must be one of {', '.join(BODY_REGIONS)}")
    return v


@dataclass(frozen=True)
class ModelCard:
    """The fields every card has: where it was read from, the engine it is for, the whole document (read-only,
    for figures no engine reads: validation scores, training notes) and its date. Subclasses add typed fields."""

    path: Path
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    engine: str | None = card_field(default=None)
    date: str | None = card_field(default=None)
    #: the body region the model was trained on and covers ("head-and-neck" for the OpenKBP models); the anatomy
    #: check (organscope.qc) refuses organs in scans of another region. None: not stated, no region check.
    body_region: str | None = card_field(default=None, parse=_body_region)
    #: organs whose confidence (Segmentation.confidence) is below this fail the anatomy check ("qc_min_confidence",
    #: chosen out of fold where the card says so: organs that unsure were nearly always wrong). None: no threshold.
    qc_min_confidence: float | None = card_field(default=None, parse=probability)

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read and validate the card at `path` (one ModelError naming the file and the field on any problem)."""
        path = Path(path)
        return cls.from_dict(read_card(path), path)

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
            except CardFieldError as exc:
                where = key if exc.at is None else f"{key}.{exc.at}"
                if exc.missing:
                    raise ModelError(f"Model card {path.name} lacks the field {where!r}.") from None
                got = data[key] if exc.value is _REQUIRED else exc.value
                raise ModelError(f"Model card {path.name}: field {where!r} {exc} (got {_short(got)}).") from None
            except (TypeError, ValueError, KeyError):
                raise ModelError(f"Model card {path.name}: field {key!r} has the wrong form "
                                 f"(got {_short(data[key])}).") from None
        card = cls(**values)
        card.check()
        return card

    def check(self) -> None:
        """Checks across fields (a subclass raises ModelError naming them); called once after parsing."""

    @property
    def organ_names(self) -> tuple[str, ...]:
        """The organs the model reports, background excluded (a subclass says where its card lists them)."""
        return ()

    def get(self, key: str, default=None):
        """A value of the card's document that no field declares (figures, notes)."""
        return self.raw.get(key, default)

    @property
    def validation(self) -> Mapping[str, Any]:
        return self.raw.get("validation", MappingProxyType({}))


def read_card(path: Path) -> Mapping[str, Any]:
    """The JSON document of a card (a ModelError naming the file when it cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Model card {Path(path).name} cannot be read as JSON ({exc}).") from None


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
