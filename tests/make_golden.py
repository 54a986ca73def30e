"""Record the shipped sparse model's accuracy on tests/data/openkbp (run once when a new model ships)."""
import json
from pathlib import Path

from organscope.datasets import Dataset
from organscope.engines.sparse import SparseEngine
from organscope.training.sparse_validation import validate

DATA = Path(__file__).parent / "data" / "openkbp"

if __name__ == "__main__":
    res = validate(SparseEngine(threads=2), Dataset(DATA).split("validation"), n_points=1000, seed=0)
    out = {"points_per_case": 1000, **res.to_dict()}
    (DATA / "golden_sparse.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
