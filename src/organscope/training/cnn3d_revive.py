"""One-off repair of a cnn3d checkpoint whose output classes died (probability ~1e-9 everywhere) under the
first, clamped cross-entropy: their rows of the last 1x1x1 convolution are set to the mean of the living
organ classes' rows (bias 2 nats lower), so they start from "an organ" and learn with normal gradients.
Recorded in the checkpoint's history. In the shipped run this was done at step 10000 (after the loss fix),
did not hold (the classes fell back to ~1e-7 within 1000 steps: their rows compete with the living organs and
the last 8 features carry nothing that separates them), and was done again at step 11000 together with a 10x
cross-entropy weight on organ voxels.

    python -m organscope.training.cnn3d_revive RUN_DIR CLASS [CLASS ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def revive(run_dir: Path, dead: list[int]) -> None:
    ck = torch.load(run_dir / "last.pt", weights_only=False)
    net = ck["net"]
    w_key, b_key = "head.2.weight", "head.2.bias"
    n_classes = net[w_key].shape[0]
    alive = [c for c in range(2, n_classes) if c not in dead]
    for c in dead:
        net[w_key][c] = net[w_key][alive].mean(0)
        net[b_key][c] = net[b_key][alive].mean() - 2.0
    ck["state"]["history"].append({"step": ck["state"]["step"], "revived_classes": dead})
    torch.save(ck, run_dir / "last.pt")
    print(f"revived classes {dead} at step {ck['state']['step']}")


if __name__ == "__main__":
    revive(Path(sys.argv[1]), [int(v) for v in sys.argv[2:]])
