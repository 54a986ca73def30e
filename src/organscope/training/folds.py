"""Cross-validation folds by patient (issue 14): every choice is to be made on out-of-fold predictions, never on
the same validation cases again and again. OpenKBP has one scan per patient, so a case is a patient.

    python -m organscope.training.folds DATA_DIR [--k 5] [--seed 0]      # prints {case: fold} as JSON

The assignment depends only on the sorted case ids, k and the seed, so every engine and every session gets the
same folds. `fold_cases(data_root, fold)` gives (training cases, held-out cases) of one fold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def assign_folds(case_ids, k: int = 5, seed: int = 0) -> dict[str, int]:
    """{case: fold} with fold sizes differing by at most one (a seeded permutation of the sorted ids)."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    ids = sorted(set(case_ids))
    if len(ids) < k:
        raise ValueError(f"{len(ids)} cases cannot make {k} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i]: int(pos % k) for pos, i in enumerate(order)}


def dataset_case_ids(data_root: Path) -> list[str]:
    meta = json.loads((Path(data_root) / "dataset.json").read_text())
    return [c["case"] for c in meta["cases"]]


def fold_cases(data_root: Path, fold: int, k: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training cases, held-out cases) of fold `fold` over every case of the dataset (all splits)."""
    folds = assign_folds(dataset_case_ids(data_root), k, seed)
    if not 0 <= fold < k:
        raise ValueError(f"fold must be 0..{k - 1}")
    return ([c for c, f in folds.items() if f != fold], [c for c, f in folds.items() if f == fold])


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(assign_folds(dataset_case_ids(a.data), a.k, a.seed), indent=1))


if __name__ == "__main__":
    main()
