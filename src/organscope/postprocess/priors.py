"""Anatomical priors: remove an organ's voxels that lie where anatomy says it cannot be, relative to
the bounding boxes of anchor organs (per-organ-2d paper, "Post-processing and prior knowledge").

Rules are data (a JSON file, e.g. `organscope/data/priors_headneck.json`), one rule per
(organ, anchor, relation). All geometry is in world RAS+ millimetres through the label map's affine,
so a rule means the same on any grid orientation (RAS, LPS, OpenKBP's PLI, oblique):

    superior_of / inferior_of    along +z / -z (patient's head / feet)
    anterior_of / posterior_of   along +y / -y
    lateral_of                   away from the anchor's mid-sagittal plane (x = centre of the anchor's box),
                                 towards the side where the organ's own main part (its largest connected
                                 component) lies. No rule ever says which side "left" is, so a dataset
                                 whose left/right names are swapped is handled the same.
    medial_to                    within a distance of the anchor's mid-sagittal plane (either side)

`reference` picks a plane of the anchor's box: "min" / "max" (lowest / highest world coordinate along
the axis; for lateral_of and medial_to, "max" is the anchor's outer edge on the organ's side and "min"
its far edge) or "centre". `margin_mm` is slack: a voxel is removed only when it lies more than
`margin_mm` on the wrong side of the reference plane (a negative margin makes the rule stricter).

    superior_of, reference r, margin m:  keep z >= r - m
    lateral_of,  reference r, margin m:  keep side * (x - anchor_centre_x) >= r - m
    medial_to,   reference r, margin m:  keep |x - anchor_centre_x| <= r + m

All rules of one call are evaluated on the input label map (boxes of anchors as given, before any rule
removes anything) and their removals are combined, so the result does not depend on the rules' order.
A rule whose anchor (or organ) is absent from the label map, or not named in it, is skipped. Removed
voxels become background (0).

Arrays in, arrays out: no file is read here except by `load_rules`.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..segmentation import Segmentation
from ..errors import InputError, ModelError
from ..organs import normalize_name
from ..volume import Volume

#: relation -> (world axis, direction) for the relations along one axis
AXIAL_RELATIONS = {"superior_of": (2, 1.0), "inferior_of": (2, -1.0),
                   "anterior_of": (1, 1.0), "posterior_of": (1, -1.0)}
SIDE_RELATIONS = ("lateral_of", "medial_to")
RELATIONS = (*AXIAL_RELATIONS, *SIDE_RELATIONS)
REFERENCES = ("min", "max", "centre")
ANCHOR_PARTS = ("largest_component", "all")
BUILTIN = {"headneck": "priors_headneck.json"}
SCHEMA_VERSION = 1

# status of one rule on one label map
APPLIED, ORGAN_ABSENT, ANCHOR_ABSENT, NO_SIDE = "applied", "organ_absent", "anchor_absent", "no_side"


@dataclass(frozen=True)
class Rule:
    """One anatomical prior: `organ` lies `relation` the `reference` plane of `anchor`'s box, with slack."""

    id: str
    organ: str
    anchor: str
    relation: str
    reference: str
    margin_mm: float
    why: str = ""


@dataclass(frozen=True)
class RuleSet:
    """Rules plus, per engine, the ids of the rules measured to raise validation Dice for that engine."""

    rules: tuple[Rule, ...]
    enabled_for: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    anchor_part: str = "largest_component"
    meta: Mapping = field(default_factory=dict, compare=False)  # description, measurements, ... (kept on save)

    def __post_init__(self):
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise InputError(f"Prior rule ids must be unique, but {dup} appear more than once.")
        if self.anchor_part not in ANCHOR_PARTS:
            raise InputError(f"anchor_part must be one of {list(ANCHOR_PARTS)}, got {self.anchor_part!r}.")
        for engine, sel in self.enabled_for.items():
            unknown = [i for i in sel if i not in ids]
            if unknown:
                raise InputError(f"enabled_for[{engine!r}] names rules {unknown} that the file does not define.")

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise InputError(f"No prior rule with id {rule_id!r}; the rules are {[r.id for r in self.rules]}.")

    def subset(self, rule_ids: Iterable[str]) -> "RuleSet":
        """The same settings with only these rules (in file order)."""
        keep = set(rule_ids)
        for i in keep:
            self.rule(i)
        enabled = {e: tuple(i for i in ids if i in keep) for e, ids in self.enabled_for.items()}
        return replace(self, rules=tuple(r for r in self.rules if r.id in keep), enabled_for=enabled)

    def for_engine(self, engine: str) -> "RuleSet":
        """Only the rules measured to help `engine` (see organscope.training.measure_priors)."""
        if engine not in self.enabled_for:
            raise ModelError(
                f"No measured selection of anatomical priors for engine {engine!r} (measured: "
                f"{sorted(self.enabled_for) or 'none'}); run `python -m organscope.training.measure_priors "
                f"--engine {engine}` or apply all rules without naming an engine.")
        return self.subset(self.enabled_for[engine])

    def with_selection(self, engine: str, rule_ids: Sequence[str], measurement: Mapping | None = None) -> "RuleSet":
        """A copy whose `enabled_for[engine]` is `rule_ids` (and its measurement summary recorded in meta)."""
        for i in rule_ids:
            self.rule(i)
        enabled = {**self.enabled_for, engine: tuple(r.id for r in self.rules if r.id in set(rule_ids))}
        meta = dict(self.meta)
        if measurement is not None:
            meta["measurements"] = {**dict(meta.get("measurements", {})), engine: dict(measurement)}
        return replace(self, enabled_for=enabled, meta=meta)

    def to_dict(self) -> dict:
        """The JSON structure: version, description, anchor_part, rules, enabled_for, then other meta."""
        rest = {k: v for k, v in self.meta.items() if k not in ("version", "description")}
        head = {"version": SCHEMA_VERSION}
        if "description" in self.meta:
            head["description"] = self.meta["description"]
        rules = [{k: v for k, v in vars(r).items() if k != "why" or v} for r in self.rules]
        return {**head, "anchor_part": self.anchor_part, "rules": rules,
                "enabled_for": {e: list(ids) for e, ids in self.enabled_for.items()}, **rest}


@dataclass(frozen=True)
class RuleOutcome:
    """What one rule did to one label map: `removed` are flat (C-order) indices of the voxels it removes."""

    rule_id: str
    status: str
    removed: np.ndarray


# --- loading and saving ---------------------------------------------------------------------------

def load_rules(path_or_name: str | os.PathLike | RuleSet = "headneck") -> RuleSet:
    """Rules from a JSON file, or a built-in set by name ("headneck": the OpenKBP organs)."""
    if isinstance(path_or_name, RuleSet):
        return path_or_name
    key = str(path_or_name)
    if key in BUILTIN:
        text = (resources.files("organscope") / "data" / BUILTIN[key]).read_text(encoding="utf-8")
        source = f"built-in priors {key!r}"
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise InputError(f"No prior rules file {path}; give a JSON rules file or one of {sorted(BUILTIN)}.")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputError(f"{source} is not valid JSON ({e}).") from None
    return rules_from_dict(data, source=source)


def rules_from_dict(data: Mapping, *, source: str = "prior rules") -> RuleSet:
    """Validate and build a RuleSet from the JSON structure (see priors_headneck.json)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise InputError(f"{source}: expected an object with a 'rules' list.")
    if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise InputError(f"{source}: rules file version {data.get('version')!r} is not {SCHEMA_VERSION}; "
                         "update organscope or the file.")
    rules = tuple(_rule(r, source) for r in data["rules"])
    enabled = data.get("enabled_for", {})
    if not isinstance(enabled, Mapping) or not all(isinstance(v, list) for v in enabled.values()):
        raise InputError(f"{source}: 'enabled_for' must map engine names to lists of rule ids.")
    meta = {k: v for k, v in data.items() if k not in ("rules", "enabled_for", "anchor_part")}
    try:
        return RuleSet(rules, {str(e): tuple(map(str, ids)) for e, ids in enabled.items()},
                       anchor_part=str(data.get("anchor_part", "largest_component")), meta=meta)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def _rule(d, source: str) -> Rule:
    if not isinstance(d, Mapping):
        raise InputError(f"{source}: every rule must be an object, got {d!r}.")
    missing = [k for k in ("id", "organ", "anchor", "relation", "reference", "margin_mm") if k not in d]
    if missing:
        raise InputError(f"{source}: rule {d.get('id', d)!r} lacks {missing}.")
    rid = str(d["id"])
    if d["relation"] not in RELATIONS:
        raise InputError(f"{source}: rule {rid!r} has relation {d['relation']!r}; use one of {list(RELATIONS)}.")
    if d["reference"] not in REFERENCES:
        raise InputError(f"{source}: rule {rid!r} has reference {d['reference']!r}; use one of {list(REFERENCES)}.")
    if d["relation"] == "medial_to" and d["reference"] == "min":
        raise InputError(f"{source}: rule {rid!r}: medial_to takes reference 'centre' or 'max', not 'min'.")
    try:
        margin = float(d["margin_mm"])
    except (TypeError, ValueError):
        margin = math.nan
    if not math.isfinite(margin):
        raise InputError(f"{source}: rule {rid!r} has margin_mm {d['margin_mm']!r}; give a number of mm.")
    organ, anchor = normalize_name(d["organ"]), normalize_name(d["anchor"])
    if organ == anchor:
        raise InputError(f"{source}: rule {rid!r} relates {organ!r} to itself; the anchor must be another organ.")
    return Rule(rid, organ, anchor, str(d["relation"]), str(d["reference"]), margin, str(d.get("why", "")))


def save_rules(ruleset: RuleSet, path: str | os.PathLike) -> None:
    """Write the rules JSON atomically (temp file + rename); each rule, and each innermost object or list,
    on one line so that diffs stay readable."""
    text = _json_lines(ruleset.to_dict()) + "\n"
    if rules_from_dict(json.loads(text)) != ruleset:  # never write a file that reads back differently
        raise InputError(f"Cannot write {path}: the rules do not survive a JSON round trip.")
    from ..io.atomic import write_text_atomic

    write_text_atomic(path, text)


def _json_lines(o, indent: int = 0) -> str:
    """JSON with containers of plain values on one line and the others spread over lines."""
    flat = not isinstance(o, (dict, list)) or all(not isinstance(v, (dict, list))
                                                  for v in (o.values() if isinstance(o, dict) else o))
    if flat:
        return json.dumps(o, allow_nan=False)
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(o, dict):
        body = ",\n".join(f"{inner}{json.dumps(k)}: {_json_lines(v, indent + 2)}" for k, v in o.items())
        return f"{{\n{body}\n{pad}}}"
    body = ",\n".join(f"{inner}{_json_lines(v, indent + 2)}" for v in o)
    return f"[\n{body}\n{pad}]"


# --- applying -------------------------------------------------------------------------------------

def apply_priors(labels: Segmentation | Volume, names: Mapping[int, str] | None = None,
                 rules: RuleSet | Sequence[Rule] | str | os.PathLike = "headneck", *,
                 engine: str | None = None):
    """Remove voxels that break the rules. Returns the same kind it is given: a Segmentation (its `names`
    are used; its timings gain "priors") or a labels Volume (then `names`, {label: organ}, is required).

    `engine` applies only the rules measured to help that engine (`enabled_for` in the rules file);
    without it every rule given is applied.
    """
    ruleset = _ruleset(rules, engine)
    if isinstance(labels, Segmentation):
        if names is not None and dict(names) != dict(labels.names):
            raise InputError("apply_priors got a Segmentation and different names; leave names out.")
        t0 = time.perf_counter()
        arr = apply_priors_array(labels.labels.array, labels.labels.affine, labels.names, ruleset)
        confidence = labels.confidence
        if arr is not labels.labels.array and confidence:  # an organ whose every voxel broke a rule is gone
            counts = np.bincount(arr.ravel(order="K"), minlength=max(labels.names, default=0) + 1)
            confidence = {n: c for n, c in confidence.items()
                          if any(counts[v] for v, name in labels.names.items() if name == n)}
        timings = {**labels.timings_s, "priors": time.perf_counter() - t0}
        # confidence and class probabilities are the engine's; they stay (the latter are not re-masked)
        return replace(labels, labels=labels.labels.with_array(arr), names=dict(labels.names), timings_s=timings,
                       confidence=confidence)
    if isinstance(labels, Volume):
        if names is None:
            raise InputError("apply_priors needs the organ names ({label: organ}) of a labels Volume.")
        return labels.with_array(apply_priors_array(labels.array, labels.affine, names, ruleset))
    raise InputError(f"apply_priors takes a Segmentation or a labels Volume, not {type(labels).__name__}; "
                     "for a bare array use apply_priors_array(array, affine, names, rules).")


def apply_priors_array(array: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                       rules: RuleSet | Sequence[Rule]) -> np.ndarray:
    """A copy of the integer label `array` (on the grid of `affine`) with every rule's violations set to 0."""
    array = _check_labels(array)
    out = array.copy()
    removed = [o.removed for o in evaluate_rules(array, affine, names, rules).values() if o.removed.size]
    if removed:
        out.reshape(-1)[np.concatenate(removed)] = 0
    return out


def evaluate_rules(array: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                   rules: RuleSet | Sequence[Rule]) -> dict[str, RuleOutcome]:
    """Each rule's outcome on the input label map (independently of the others): rule id -> RuleOutcome."""
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet(tuple(rules))
    geo = _Geometry(array, affine, names)
    return {rule.id: _evaluate(rule, geo, ruleset.anchor_part) for rule in ruleset.rules}


def rules_excess_mm(array: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                    rules: RuleSet | Sequence[Rule]) -> dict[str, float]:
    """Per rule, how far (mm) the organ's farthest voxel lies on the wrong side of the rule's reference
    plane (<= 0 if none does): the smallest margin_mm at which the rule removes nothing; NaN where the
    rule is skipped. Measured on reference contours, it sets margins (measure_priors --fit-margins-on)."""
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet(tuple(rules))
    geo = _Geometry(array, affine, names)
    out = {}
    for rule in ruleset.rules:
        status, excess, _ = _excess(rule, geo, ruleset.anchor_part)
        out[rule.id] = float(excess.max()) if status == APPLIED and excess.size else math.nan
    return out


# --- internals ------------------------------------------------------------------------------------

class _Geometry:
    """Per-label voxel positions in world mm, computed once per label and shared by the rules."""

    def __init__(self, array: np.ndarray, affine: np.ndarray, names: Mapping[int, str]):
        self.array = _check_labels(array)
        self.affine = np.asarray(affine, dtype=float)
        self.ids = {normalize_name(n): int(i) for i, n in names.items() if int(i) != 0}
        top = max(self.ids.values(), default=0)
        self.boxes = ndimage.find_objects(self.array, max_label=top) if top > 0 else []
        self._cache: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray] | None] = {}

    def present(self, organ: str) -> bool:
        i = self.ids.get(organ)
        return i is not None and i <= len(self.boxes) and self.boxes[i - 1] is not None

    def voxels(self, organ: str, largest_component: bool = False):
        """(flat indices, world mm (N, 3)) of the organ's voxels, or of its largest connected part."""
        key = (organ, largest_component)
        if key not in self._cache:
            lab = self.ids[organ]
            box = self.boxes[lab - 1]
            mask = self.array[box] == lab
            if largest_component:
                cc, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
                if n > 1:
                    mask = cc == (np.argmax(np.bincount(cc.ravel())[1:]) + 1)
            local = np.nonzero(mask)
            vox = np.stack([c + s.start for c, s in zip(local, box)], axis=1)
            flat = np.ravel_multi_index(tuple(vox.T), self.array.shape)
            world = vox @ self.affine[:3, :3].T + self.affine[:3, 3]
            self._cache[key] = (flat, world)
        return self._cache[key]


def _excess(rule: Rule, geo: _Geometry, anchor_part: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(status, per-voxel distance past the reference plane on the wrong side, flat indices of the organ)."""
    empty = np.zeros(0, dtype=float)
    if not geo.present(rule.organ):
        return ORGAN_ABSENT, empty, empty.astype(np.intp)
    if not geo.present(rule.anchor):
        return ANCHOR_ABSENT, empty, empty.astype(np.intp)
    flat, world = geo.voxels(rule.organ)
    _, anchor = geo.voxels(rule.anchor, largest_component=anchor_part == "largest_component")
    lo, hi = anchor.min(axis=0), anchor.max(axis=0)
    if rule.relation in AXIAL_RELATIONS:
        axis, sign = AXIAL_RELATIONS[rule.relation]
        ref = {"min": lo[axis], "max": hi[axis], "centre": 0.5 * (lo[axis] + hi[axis])}[rule.reference]
        return APPLIED, -sign * (world[:, axis] - ref), flat
    centre, half = 0.5 * (lo[0] + hi[0]), 0.5 * (hi[0] - lo[0])
    ref = {"min": -half, "max": half, "centre": 0.0}[rule.reference]
    if rule.relation == "medial_to":
        return APPLIED, np.abs(world[:, 0] - centre) - ref, flat
    _, main = geo.voxels(rule.organ, largest_component=True)
    side = np.sign(main[:, 0].mean() - centre)
    if side == 0:
        return NO_SIDE, empty, empty.astype(np.intp)
    return APPLIED, -(side * (world[:, 0] - centre) - ref), flat


def _evaluate(rule: Rule, geo: _Geometry, anchor_part: str) -> RuleOutcome:
    status, excess, flat = _excess(rule, geo, anchor_part)
    return RuleOutcome(rule.id, status, flat[excess > rule.margin_mm] if status == APPLIED else flat[:0])


def _ruleset(rules, engine: str | None) -> RuleSet:
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    elif not isinstance(rules, RuleSet):
        rules = RuleSet(tuple(rules))
    return rules.for_engine(engine) if engine is not None else rules


def _check_labels(array) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 3:
        raise InputError(f"A label map must be a 3D array, got shape {a.shape}.")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.array_equal(a, np.round(a)):
            raise InputError("The label map holds non-integer values; labels must be integers.")
        a = a.astype(np.int32)
    return a
