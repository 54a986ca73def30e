"""Reader for labelled CT folders laid out as `images/<case>.nii.gz`, `labels/<case>.nii.gz`, `dataset.json`.

dataset.json holds `labels` (organ name -> integer, 0 = background) and optionally `cases`, a list of
`{"case": id, "split": ..., "organs": [...], "spacing_mm": [...]}`.

**Partial labels.** An organ missing from a case's `organs` list was not contoured in that case: its
voxels are *unknown*, not background (they carry label 0 in the file, indistinguishable from true
background). Training must not learn "background" there and scoring must skip that organ. A case with no
`organs` entry counts as fully contoured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError
from .organs import LabelMap, label_map_from_dataset_json, normalize_name
from .volume import Volume

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """One labelled scan of a Dataset. `organs` are the contoured organs (canonical names)."""

    case_id: str
    split: str | None
    organs: tuple[str, ...]
    spacing_mm: tuple[float, float, float] | None
    image_path: Path
    label_path: Path
    label_map: LabelMap

    @property
    def uncontoured(self) -> tuple[str, ...]:
        """Organs of the label map NOT contoured in this case: unknown there, not background."""
        return tuple(n for n in self.label_map.names.values() if n not in self.organs)

    @property
    def fully_contoured(self) -> bool:
        return not self.uncontoured

    def known_mask_ids(self) -> tuple[int, ...]:
        """Labels whose voxels are trustworthy in this case: the contoured organs, plus 0 (background)
        only when every organ is contoured."""
        ids = tuple(sorted(self.label_map.ids[n] for n in self.organs))
        return ((0,) + ids) if self.fully_contoured else ids

    def load_image(self) -> Volume:
        return Volume(*read_nifti(self.image_path), meta={"path": str(self.image_path), "case": self.case_id})

    def load_labels(self) -> Volume:
        return Volume(*read_nifti(self.label_path), meta={"path": str(self.label_path), "case": self.case_id})


def partial_label_mask(labels: np.ndarray, case: Case) -> np.ndarray:
    """Boolean array: True where `labels` can be trusted in this case.

    A voxel is known if its label is a contoured organ, or if it is background and all organs of the
    label map are contoured in the case. Background voxels of a partially contoured case are unknown
    (an uncontoured organ may hide there); use `case.uncontoured` to ignore only specific organ outputs.
    """
    return np.isin(labels, np.asarray(case.known_mask_ids()))


class Dataset:
    """A folder with images/, labels/ and dataset.json.

    `require_files=False` reads dataset.json only (e.g. to score predictions against a labels folder).
    `dataset_json` points at a dataset.json elsewhere than `root/dataset.json`.
    """

    def __init__(self, root: str | Path, *, dataset_json: str | Path | None = None, require_files: bool = True):
        self.root = Path(root)
        path = Path(dataset_json) if dataset_json is not None else self.root / "dataset.json"
        if not path.is_file():
            raise InputError(f"No dataset.json found at {path}; a dataset folder needs images/, labels/ "
                             "and a dataset.json with the label names.")
        meta = read_json(path)
        self.dataset_json = path
        self.name: str = str(meta.get("name", self.root.name))
        self.label_map: LabelMap = label_map_from_dataset_json(meta, dataset=str(path))
        entries = meta.get("cases")
        if entries is None:
            entries = [{"case": c} for c in _case_ids(self.root / "labels")]
        self.cases: list[Case] = [self._case(e, path) for e in entries]
        if require_files:
            for c in self.cases:
                for p in (c.image_path, c.label_path):
                    if not p.is_file():
                        raise InputError(f"Case {c.case_id!r} of {path} has no file {p}; "
                                         "add it or remove the case from dataset.json.")

    def _case(self, entry: dict | str, path: Path) -> Case:
        if isinstance(entry, str):
            entry = {"case": entry}
        if "case" not in entry:
            raise InputError(f"{path}: every entry of 'cases' needs a 'case' id, got {entry!r}.")
        cid = str(entry["case"])
        all_organs = tuple(self.label_map.names.values())
        organs = entry.get("organs")
        if organs is None:
            organs = all_organs
        else:
            organs = tuple(normalize_name(o) for o in organs)
            unknown = [o for o in organs if o not in self.label_map.ids]
            if unknown:
                raise InputError(f"{path}: case {cid!r} lists organs {unknown} that are not in its 'labels'.")
            organs = tuple(o for o in all_organs if o in organs)  # label order
        sp = entry.get("spacing_mm")
        return Case(
            case_id=cid,
            split=entry.get("split"),
            organs=organs,
            spacing_mm=tuple(float(s) for s in sp) if sp is not None else None,
            image_path=self.root / "images" / f"{cid}.nii.gz",
            label_path=self.root / "labels" / f"{cid}.nii.gz",
            label_map=self.label_map,
        )

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, {len(self)} cases)"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.split for c in self.cases if c.split is not None))

    def split(self, name: str) -> list[Case]:
        """The cases of one split (e.g. "train", "validation")."""
        if name not in self.splits:
            raise InputError(f"Dataset {self.name!r} has no split {name!r}; its splits are {list(self.splits)}.")
        return [c for c in self.cases if c.split == name]

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise InputError(f"Dataset {self.name!r} has no case {case_id!r}.")


def read_json(path: str | Path) -> dict:
    """Parse a JSON file or raise InputError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read JSON file {path}: {e}.") from None


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a NIfTI file, array in the file's own voxel order; InputError if unreadable."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"File not found: {p}.")
    try:
        img = nib.load(str(p))
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)
    except Exception as e:  # nibabel raises many types for a broken file
        raise InputError(f"Cannot read {p} as NIfTI ({type(e).__name__}: {e}).") from None


def _case_ids(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise InputError(f"dataset.json lists no 'cases' and there is no folder {folder} to find them in.")
    return sorted(case_id(p) for p in folder.iterdir() if case_id(p) is not None)


def case_id(path: Path) -> str | None:
    """`X` for `X.nii.gz` / `X.nii`, else None."""
    for suf in NIFTI_SUFFIXES:
        if path.name.endswith(suf):
            return path.name[: -len(suf)]
    return None
