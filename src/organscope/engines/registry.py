"""The engines by name: the one place that knows every engine. It builds them (importing each only when asked
for) and hands the composite engines their organ localisers, so no engine imports another.

    get_engine("cnn3d", threads=2)        an engine
    get_localizer("heatmap")              an organ localiser (locate(volume) -> {organ: OrganLocation})
    load_card("models/x.json")            a model card, read and checked by the card class of its `engine`
    ENGINE_INFO                           name -> one line for people (no import: the CLI's help uses it)
"""
from __future__ import annotations

import os
import importlib
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import ModelError

if TYPE_CHECKING:  # the registry itself stays light: the CLI reads ENGINE_INFO for its help
    from ..modelcard import ModelCard
    from .base import Engine

#: name -> what it is, for `--engine` help and error messages
ENGINE_INFO: dict[str, str] = {
    "sparse": "sparse point classifier, coarse-to-fine (also answers point queries: their default)",
    "cnn3d": "tiny factorised 3D CNN on the whole scan",
    "cascade": "organ boxes from a localiser, then one 3D CNN per organ group in its crop",
    "slice2d": "one 2D network per organ on axial slices of the body",
    "ensemble": "sparse and cnn3d together: their class probabilities averaged (0.7 / 0.3, fitted out of fold; "
                "default: the best out of fold)",
}
#: the segmentation engine when none is named: the best out of fold (cv/README.md, issue 14)
DEFAULT_ENGINE = "ensemble"
#: the engine answering point queries when none is named (the only one that answers them)
DEFAULT_QUERY_ENGINE = "sparse"

#: name -> what it is, for `--localizer` help
LOCALIZER_INFO: dict[str, str] = {
    "sparse_grid": "the sparse classifier on one coarse grid (default)",
    "heatmap": "a 3D network regressing one heat-map per organ",
}


def get_localizer(name: str = "sparse_grid", *, model=None, threads: int | None = None, **options):
    """An organ localiser by name; `model` names the heat-map model (sparse_grid uses the sparse engine's)."""
    if name == "sparse_grid":
        from .sparse.locate import SparseGridLocalizer

        return SparseGridLocalizer(threads=threads, **options)
    if name == "heatmap":
        from ..localize.heatmap import HeatmapLocalizer

        return HeatmapLocalizer(model, threads=threads, **options)
    raise ModelError(f"Unknown localiser {name!r}; available: {', '.join(LOCALIZER_INFO)}.")


#: name -> (module of the package, class): what engine_class and card_class import, only when asked for
_ENGINE_CLASSES = {"sparse": (".sparse", "SparseEngine"), "cnn3d": (".cnn3d", "Cnn3dEngine"),
                   "slice2d": (".slice2d", "Slice2dEngine"), "cascade": (".cascade", "CascadeEngine"),
                   "ensemble": (".ensemble", "EnsembleEngine")}
_CARD_CLASSES = {"sparse": (".sparse.card", "SparseCard"), "cnn3d": (".cnn3d.card", "Cnn3dCard"),
                 "slice2d": (".slice2d.card", "Slice2dCard"), "cascade": (".cascade.card", "CascadeCard"),
                 "locate": ("..localize.heatmap_card", "HeatmapCard")}


#: name -> (module, constant): the shipped model an engine runs when none is named
_DEFAULT_MODELS = {"sparse": (".sparse.model", "DEFAULT_MODEL"), "cnn3d": (".cnn3d.engine", "DEFAULT_MODEL"),
                   "slice2d": (".slice2d.engine", "DEFAULT_MODEL"), "cascade": (".cascade.engine", "DEFAULT_MODEL")}


def default_model(engine: str) -> str:
    """The name of the shipped model `engine` runs when no model is named (e.g. "cnn3d_openkbp")."""
    if engine not in _DEFAULT_MODELS:
        raise ModelError(f"Engine {engine!r} has no model of its own; engines with one: {', '.join(_DEFAULT_MODELS)}.")
    return _import(*_DEFAULT_MODELS[engine])


def _import(module: str, attr: str):
    return getattr(importlib.import_module(module, __package__), attr)


def engine_class(name: str) -> type:
    """The class of an engine (its module imported, no model loaded)."""
    if name not in _ENGINE_CLASSES:
        raise ModelError(f"Unknown engine {name!r}; available engines: {', '.join(ENGINE_INFO)}.")
    return _import(*_ENGINE_CLASSES[name])


#: a card's `engine` field -> what reads it (the engines with a model of their own, and "locate" for the heat-map
#: localiser; the ensemble has none: it runs its members' models)
CARD_KINDS = tuple(_CARD_CLASSES)


def card_class(engine: str) -> "type[ModelCard]":
    """The typed card class for a card's `engine` field (its module imported, no model loaded)."""
    if engine not in _CARD_CLASSES:
        raise ModelError(f"No model card kind {engine!r}; known: {', '.join(CARD_KINDS)}.")
    return _import(*_CARD_CLASSES[engine])


def load_card(path: str | os.PathLike) -> "ModelCard":
    """The card at `path`, read and checked by the card class its `engine` field names."""
    from ..modelcard import read_card

    path = Path(path)
    data = read_card(path)
    engine = data.get("engine") if isinstance(data, dict) else None
    if engine not in CARD_KINDS:
        raise ModelError(f"Model card {path.name}: field 'engine' must be one of {', '.join(CARD_KINDS)} "
                         f"(got {engine!r}).")
    return card_class(engine).from_dict(data, path)


def _plain(name: str) -> Callable[..., "Engine"]:
    return lambda **kw: engine_class(name)(**kw)


def _with_localizers(name: str) -> Callable[..., "Engine"]:
    """Composite engines get their organ localisers from here: the sparse-grid one is another engine's."""
    return lambda **kw: engine_class(name)(localizers=partial(get_localizer, threads=kw.get("threads")), **kw)


def _with_members(name: str) -> Callable[..., "Engine"]:
    """The ensemble gets its member engines from here, built like any other."""
    return lambda **kw: engine_class(name)(engines=get_engine, **kw)


ENGINES: dict[str, Callable[..., "Engine"]] = {"sparse": _plain("sparse"), "cnn3d": _plain("cnn3d"),
                                             "slice2d": _with_localizers("slice2d"),
                                             "cascade": _with_localizers("cascade"),
                                             "ensemble": _with_members("ensemble")}


def engine_of_model(model: str | os.PathLike) -> str:
    """The engine a model is for, from its card's `engine` field: a shipped model name, a path to its .onnx (the
    card beside it) or .json card, or a folder holding one card (a multi-file model). The card is read once per
    model text in a process (as the pipeline caches engines): `api.query(..., model=M)` asks on every call."""
    return _engine_of_model(str(model))


@lru_cache(maxsize=32)
def _engine_of_model(model: str) -> str:
    from ..modelcard import MODELS_DIR, read_card

    p = Path(model)
    if p.suffix == ".onnx":
        p = p.with_suffix(".json")
    elif p.is_dir():
        cards = sorted(p.glob("*.json"))
        if len(cards) != 1:
            raise ModelError(f"Model folder {p} holds {len(cards)} .json cards, not one; name the card, or the "
                             "engine with --engine.")
        p = cards[0]
    elif p.suffix != ".json":
        p = MODELS_DIR / f"{p.name}.json"
    if not p.exists():
        raise ModelError(f"Model {str(model)!r}: no card {p.name} found; name a shipped model "
                         f"({', '.join(sorted(q.stem for q in MODELS_DIR.glob('*.json')))}) or an .onnx with its "
                         ".json card beside it.")
    engine = read_card(p).get("engine")
    if engine not in _ENGINE_CLASSES:
        raise ModelError(f"Model card {p.name} is for {engine!r}, which is not a segmentation engine; name the "
                         f"engine with --engine ({', '.join(ENGINE_INFO)}).")
    return engine


def engine_names() -> list[str]:
    return list(ENGINE_INFO)


def query_engines() -> list[str]:
    """Names of the engines that answer point queries (base.PointQueryEngine: prepare + query)."""
    return [n for n in ENGINE_INFO if callable(getattr(engine_class(n), "query", None))
            and callable(getattr(engine_class(n), "prepare", None))]


def get_engine(name: str, **kwargs) -> "Engine":
    """A loaded engine: name is one of ENGINE_INFO; kwargs (model, threads, ...) go to its constructor."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ModelError(f"Unknown engine {name!r}; available engines: {', '.join(ENGINE_INFO)}.") from None
    return factory(**kwargs)
