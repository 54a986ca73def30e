"""Record the shipped models' accuracy on tests/data/openkbp (run when a new model ships):
    python tests/make_golden.py [sparse] [cnn3d] [slice2d] [cascade] [ensemble]"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

DATA = Path(__file__).parent / "data" / "openkbp"

if __name__ == "__main__":
    which = sys.argv[1:] or ["sparse", "cnn3d", "slice2d", "cascade", "ensemble"]
    if "sparse" in which:
        from organscope.datasets import Dataset
        from organscope.engines.sparse import SparseEngine
        from organscope.training.sparse_validation import validate

        res = validate(SparseEngine(threads=2), Dataset(DATA).split("validation"), n_points=1000, seed=0)
        out = {"points_per_case": 1000, **res.to_dict()}
        (DATA / "golden_sparse.json").write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
    for engine in ("cnn3d", "slice2d", "cascade", "ensemble"):
        if engine in which:
            from helpers.golden import engine_dice

            out = engine_dice(engine)
            (DATA / f"golden_{engine}.json").write_text(json.dumps(out, indent=1))
            print(json.dumps(out, indent=1))
