"""From the per-organ slice2d models (train_slice2d) to a shipped engine: validate with the engine itself on
the validation cases (every organ, 3D Dice and Jaccard like `organscope evaluate`), time it per organ, and
write the card (optionally installing the models into the package)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path

from ..datasets import Dataset
from .engine_validation import score_engine


def validate(card_path: Path, data_root: Path, cases, work: Path) -> dict:
    from ..engines.registry import get_engine

    return score_engine(get_engine("slice2d", model=card_path), cases, data_root, work)


def finalize(models_dir: Path, data_root: Path, *, install: bool = False) -> dict:
    card_path = models_dir / "slice2d_openkbp.json"
    card = json.loads(card_path.read_text())
    ds = Dataset(data_root)
    order = [ds.label_map.names[i] for i in sorted(ds.label_map.names)]
    card["organs"] = {o: card["organs"][o] for o in order if o in card["organs"]}
    card.update(slice_range="sparse", range_margin_mm=10.0, largest_component=True)
    card_path.write_text(json.dumps(card, indent=1))
    cases = ds.split("validation")
    with tempfile.TemporaryDirectory() as tmp:
        res = validate(card_path, data_root, cases, Path(tmp))
    card["date"] = _dt.date.today().isoformat()
    card["validation"] = {"cases": [c.case_id for c in cases],
                          "note": "organscope segment --engine slice2d, scored like organscope evaluate", **res}
    card_path.write_text(json.dumps(card, indent=1))
    print(f"mean Dice {res['mean']['dice']:.4f}, Jaccard {res['mean']['jaccard']:.4f}")
    if install:
        from ..modelcard import MODELS_DIR

        for organ, oc in card["organs"].items():
            shutil.copy2(models_dir / oc["file"], MODELS_DIR / oc["file"])
        shutil.copy2(card_path, MODELS_DIR / card_path.name)
        print(f"installed into {MODELS_DIR}")
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder written by train_slice2d")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    finalize(a.models, a.data, install=a.install)


if __name__ == "__main__":
    main()
