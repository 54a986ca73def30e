"""Score a folder of predicted label maps against a folder of reference label maps.

Files are paired by case name (`X.nii.gz` in both folders). Organ names come from the catalogue:
the reference's from `dataset.json` (given, in the reference folder or its parent) or a sidecar
`X.json`; the prediction's from its sidecar `X.json` (`{"labels": {name: int}}`), else the reference's
numbering is assumed. When dataset.json lists `organs` for a case, only those organs are scored there:
an uncontoured organ is unknown, so predicting it is neither right nor wrong.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .. import geometry
from ..datasets import Case, Dataset, case_id, read_json, read_nifti
from ..errors import InputError
from ..io.atomic import write_text_atomic
from ..organs import LabelMap, label_map_from_dataset_json, normalize_name
from .overlap import confusion, dice, jaccard
from .surface import surface_distances

AFFINE_ATOL_MM = 1e-3
CSV_FIELDS = ("case", "organ", "dice", "jaccard", "nsd", "hd95_mm", "assd_mm", "ref_voxels", "pred_voxels")


@dataclass(frozen=True)
class OrganScore:
    """Scores of one organ in one case. NaN: absent from both (not scored); inf: absent from one."""

    case: str
    organ: str
    dice: float
    jaccard: float
    nsd: float
    hd95_mm: float
    assd_mm: float
    ref_voxels: int
    pred_voxels: int


@dataclass(frozen=True)
class OrganSummary:
    """Per-organ aggregate over cases; means and population sd ignore NaN (organ absent from both).
    HD95 statistics are over finite values; `hd95_infinite` counts the cases left out."""

    organ: str
    n: int
    dice_mean: float
    dice_sd: float
    jaccard_mean: float
    jaccard_sd: float
    nsd_mean: float
    nsd_sd: float
    hd95_mm_mean: float
    hd95_mm_sd: float
    hd95_infinite: int


def score_case(pred: np.ndarray, ref: np.ndarray, spacing_mm, organs: Iterable[tuple[str, int | None, int]],
               *, tolerance_mm: float, case: str = "") -> list[OrganScore]:
    """Score label arrays on one grid. `organs` lists (name, pred_label or None, ref_label).

    Each organ is measured inside the union of its two bounding boxes (found for all labels in one
    pass), which gives the same numbers as the full grid, faster.
    """
    organs = list(organs)
    pred, ref = _int_labels(pred), _int_labels(ref)
    pred_max = max((p for _, p, _ in organs if p is not None), default=0)
    ref_boxes = ndimage.find_objects(ref, max_label=max((r for _, _, r in organs), default=0))
    pred_boxes = ndimage.find_objects(pred, max_label=pred_max) if pred_max > 0 else []
    out = []
    for name, pid, rid in organs:
        rbox = ref_boxes[rid - 1] if rid >= 1 else None
        pbox = pred_boxes[pid - 1] if pid is not None and pid >= 1 else None
        box = _union(rbox, pbox, ref.shape)
        if box is None:  # absent from both
            p_mask = r_mask = np.zeros((1,) * ref.ndim, dtype=bool)
        else:
            p_mask = pred[box] == pid if pid is not None else np.zeros(ref[box].shape, dtype=bool)
            r_mask = ref[box] == rid
        c = confusion(p_mask, r_mask)
        sd = surface_distances(p_mask, r_mask, spacing_mm)
        out.append(OrganScore(case, name, dice(c), jaccard(c), sd.nsd(tolerance_mm), sd.hd95(),
                              sd.mean_surface_distance(), c.n_ref, c.n_pred))
    return out


@dataclass(frozen=True)
class EvaluationReport:
    """Per case x organ scores plus the cases that could not be scored."""

    scores: tuple[OrganScore, ...]
    tolerance_mm: float
    errors: Mapping[str, str] = field(default_factory=dict)  # case -> why it was not scored
    missing_predictions: tuple[str, ...] = ()

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.organ for s in self.scores))

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.case for s in self.scores))

    def summary(self) -> dict[str, OrganSummary]:
        out = {}
        for organ in self.organs:
            rows = [s for s in self.scores if s.organ == organ]
            d, j, n = (np.array([getattr(s, k) for s in rows]) for k in ("dice", "jaccard", "nsd"))
            h = np.array([s.hd95_mm for s in rows])
            hf = h[np.isfinite(h)]
            out[organ] = OrganSummary(organ, int(np.count_nonzero(~np.isnan(d))), *_ms(d), *_ms(j), *_ms(n),
                                      *_ms(hf), int(np.count_nonzero(np.isinf(h))))
        return out

    def mean_row(self) -> dict[str, float]:
        """Mean over organs of the per-organ means (organs never scored are left out)."""
        summ = list(self.summary().values())
        return {k: _nanmean([getattr(s, f"{k}_mean") for s in summ]) for k in ("dice", "jaccard", "nsd", "hd95_mm")}

    def table(self) -> str:
        """A text table like the papers': organ | n | Dice | Jaccard | NSD | HD95, and a mean row."""
        tol = f"{self.tolerance_mm:g}"
        head = ("organ", "n", "Dice", "Jaccard", f"NSD@{tol}mm", "HD95 mm")
        rows = [(s.organ, str(s.n), _pm(s.dice_mean, s.dice_sd), _pm(s.jaccard_mean, s.jaccard_sd),
                 _pm(s.nsd_mean, s.nsd_sd), _pm(s.hd95_mm_mean, s.hd95_mm_sd, 2)) for s in self.summary().values()]
        m = self.mean_row()
        rows.append(("mean", "", _pm(m["dice"]), _pm(m["jaccard"]), _pm(m["nsd"]), _pm(m["hd95_mm"], digits=2)))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows[:-1]),
                 "  ".join("-" * w for w in widths), fmt(rows[-1])]
        notes = [f"{len(self.cases)} case(s) scored"]
        n_inf = sum(s.hd95_infinite for s in self.summary().values())
        if n_inf:
            notes.append(f"{n_inf} infinite HD95 (organ missing from prediction or reference) left out of HD95")
        if self.missing_predictions:
            notes.append(f"{len(self.missing_predictions)} reference case(s) without a prediction")
        if self.errors:
            notes.append(f"{len(self.errors)} case(s) not scored because of errors")
        return "\n".join(lines + ["; ".join(notes) + "."])

    def to_csv(self, path: str | Path) -> None:
        """One row per case x organ (NaN = not scored, inf = organ missing on one side)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for s in self.scores:
            w.writerow([_csv(getattr(s, f)) for f in CSV_FIELDS])
        _write_text(path, buf.getvalue())

    def to_dict(self) -> dict:
        cases: dict[str, dict] = {}
        for s in self.scores:
            d = asdict(s)
            cases.setdefault(d.pop("case"), {})[d.pop("organ")] = {k: _json(v) for k, v in d.items()}
        summ = {o: {k: _json(v) for k, v in asdict(s).items() if k != "organ"} for o, s in self.summary().items()}
        return {"tolerance_mm": self.tolerance_mm, "cases_scored": len(self.cases),
                "summary": summ, "mean": {k: _json(v) for k, v in self.mean_row().items()},
                "cases": cases, "errors": dict(self.errors), "missing_predictions": list(self.missing_predictions)}

    def to_json(self, path: str | Path) -> None:
        """Summary and per-case scores. NaN is written as null, infinity as the string "inf"."""
        _write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")


def evaluate_dirs(pred_dir: str | Path, ref_dir: str | Path, *, dataset_json: str | Path | None = None,
                  tolerance_mm: float = 2.0, organs: Sequence[str] | None = None) -> EvaluationReport:
    """Score every prediction in `pred_dir` that has a reference of the same name in `ref_dir`.

    A case whose grids differ (shape, or affine beyond 1e-3) or whose files cannot be read is listed
    in `report.errors` with the reason and not scored; reference cases without a prediction are
    listed in `report.missing_predictions`.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not d.is_dir():
            raise InputError(f"The {what} folder {d} does not exist.")
    refs, preds = _nifti_files(ref_dir), _nifti_files(pred_dir)
    pairs = [(cid, preds[cid], refs[cid]) for cid in refs if cid in preds]
    if not pairs:
        raise InputError(f"No prediction in {pred_dir} has the file name of a reference in {ref_dir}; "
                         "name each prediction like its reference (X.nii.gz).")
    ds = _find_dataset(ref_dir, dataset_json)
    ds_cases = {c.case_id: c for c in ds.cases} if ds is not None else {}
    wanted = None if organs is None else {normalize_name(o) for o in organs}

    scores: list[OrganScore] = []
    errors: dict[str, str] = {}
    for cid, pred_path, ref_path in _progress(pairs):
        try:
            scores += _evaluate_case(cid, pred_path, ref_path, ds, ds_cases.get(cid), wanted, tolerance_mm)
        except InputError as e:
            errors[cid] = str(e)
    missing = tuple(cid for cid in refs if cid not in preds)
    return EvaluationReport(tuple(scores), float(tolerance_mm), errors, missing)


#: Every "not a label map" message starts so (a run where every case fails so is refused as a whole).
NOT_LABELS = "Not a label map:"
#: More distinct values than this is an image, not a label map (TotalSegmentator has 117 classes).
MAX_LABEL_VALUES = 1000


def check_label_map(arr: np.ndarray, path: Path, what: str) -> None:
    """InputError unless `arr` looks like a label map: integer values, none negative, few distinct ones (a CT in
    HU given as the reference folder fails here instead of scoring 0.008)."""
    arr = np.asarray(arr)
    hint = f"the {what} {path.name} looks like an image (a CT scan?); give the folder of {what} label maps"
    if arr.size == 0:
        raise InputError(f"{NOT_LABELS} the {what} {path.name} is empty.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{NOT_LABELS} {hint} (it holds non-integer values).")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        raise InputError(f"{NOT_LABELS} {hint} (it holds negative values down to {lo:g}).")
    if hi > 65535:
        raise InputError(f"{NOT_LABELS} {hint} (it holds values up to {hi:g}).")
    n = int(np.count_nonzero(np.bincount(arr.astype(np.int64, copy=False).ravel()))) if hi > MAX_LABEL_VALUES else 0
    if n > MAX_LABEL_VALUES:
        raise InputError(f"{NOT_LABELS} {hint} (it holds {n} distinct values).")


def _evaluate_case(cid: str, pred_path: Path, ref_path: Path, ds: Dataset | None, case: Case | None,
                   wanted: set[str] | None, tolerance_mm: float) -> list[OrganScore]:
    ref_map = ds.label_map if ds is not None else _sidecar_map(ref_path)
    if ref_map is None:
        raise InputError(f"No organ names for reference {ref_path}: give a dataset.json or a sidecar "
                         f"{_sidecar(ref_path).name} with {{\"labels\": {{name: number}}}}.")
    pred_map = _sidecar_map(pred_path) or ref_map
    ref, ref_aff = read_nifti(ref_path)
    check_label_map(ref, ref_path, "reference")
    pred, pred_aff = read_nifti(pred_path)
    check_label_map(pred, pred_path, "prediction")
    if pred.shape != ref.shape or not np.allclose(pred_aff, ref_aff, atol=AFFINE_ATOL_MM):
        raise InputError(f"Prediction grid (shape {pred.shape}) differs from the reference grid (shape {ref.shape}) "
                         "or its affine; resample the prediction onto the reference grid.")
    contoured = case.organs if case is not None else tuple(ref_map.names.values())
    todo = [(n, pred_map.ids.get(n), ref_map.ids[n]) for n in contoured if wanted is None or n in wanted]
    return score_case(pred, ref, geometry.spacing_mm(ref_aff), todo, tolerance_mm=tolerance_mm, case=cid)


def main_evaluate(pred_dir: str | Path, ref_dir: str | Path, *, out_prefix: str | Path | None = None,
                  tolerance_mm: float = 2.0, dataset_json: str | Path | None = None,
                  organs: Sequence[str] | None = None) -> int:
    """`organscope evaluate`: print the table, write `<out_prefix>.csv` and `.json`
    (default `PRED_DIR/evaluation`). Returns the exit status: 0, or 1 if some case had an error."""
    from ..io import check_not_input, check_writable

    prefix = Path(out_prefix) if out_prefix is not None else Path(pred_dir) / "evaluation"
    outputs = [Path(f"{prefix}.csv"), Path(f"{prefix}.json")]
    check_writable(*outputs)
    check_not_input(outputs, [p for d in (pred_dir, ref_dir) if Path(d).is_dir() for p in Path(d).iterdir()])
    report = evaluate_dirs(pred_dir, ref_dir, dataset_json=dataset_json, tolerance_mm=tolerance_mm, organs=organs)
    if report.errors and not report.scores:  # nothing could be scored: one sentence, exit 2, no files
        first = next(iter(report.errors.values()))
        more = f" (and {len(report.errors) - 1} more case(s))" if len(report.errors) > 1 else ""
        raise InputError(first.rstrip(".") + more + ".")
    report.to_csv(f"{prefix}.csv")
    report.to_json(f"{prefix}.json")
    print(report.table())
    print(f"Wrote {prefix}.csv and {prefix}.json")
    for cid, msg in report.errors.items():
        print(f"error: {cid}: {msg}", file=sys.stderr)
    if report.missing_predictions:
        print(f"note: no prediction for {len(report.missing_predictions)} reference case(s): "
              f"{', '.join(report.missing_predictions[:5])}{' ...' if len(report.missing_predictions) > 5 else ''}",
              file=sys.stderr)
    return 1 if report.errors else 0


# --- helpers --------------------------------------------------------------------------------------

def _find_dataset(ref_dir: Path, dataset_json: str | Path | None) -> Dataset | None:
    if dataset_json is not None:
        path = Path(dataset_json)
    else:
        path = next((p for p in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json") if p.is_file()), None)
        if path is None:
            return None
    return Dataset(path.parent, dataset_json=path, require_files=False)


def _nifti_files(folder: Path) -> dict[str, Path]:
    return {cid: p for p in sorted(folder.iterdir()) if p.is_file() and (cid := case_id(p)) is not None}


def _sidecar(path: Path) -> Path:
    return path.with_name(f"{case_id(path)}.json")


def _sidecar_map(path: Path) -> LabelMap | None:
    side = _sidecar(path)
    return label_map_from_dataset_json(read_json(side), dataset=str(side)) if side.is_file() else None


def _int_labels(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer):
        return a
    return np.rint(a).astype(np.int32)


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape) -> tuple[slice, ...] | None:
    if a is None or b is None:
        box = a or b
        if box is None:
            return None
    else:
        box = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))


def _ms(x: np.ndarray) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    return (float(x.mean()), float(x.std())) if x.size else (float("nan"), float("nan"))


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _pm(mean: float, sd: float | None = None, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _csv(v):
    return f"{v:.6f}" if isinstance(v, float) else v


def _json(v):
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def _progress(items: list):
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="evaluate", unit="case")



def _write_text(path: str | Path, text: str) -> None:
    """Atomically write a report file, creating its folder (--out may name a new one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
