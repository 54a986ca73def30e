"""The resumable, time-budgeted training loop of the cnn3d and cascade trainers.

A run folder holds `last.pt` (network, optimiser, state: step, elapsed seconds, best score, history) and
`best.pt` (the network with the best validation mean Dice so far). A run resumes from `last.pt`; a new run may
start from other weights (`init`). The learning rate decays polynomially (power 0.9) over whichever runs out
first, the step budget or the time budget, so a run fits the time it is given on a busy CPU; validation happens
every `val_every` steps and at the end."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def open_run(net: torch.nn.Module, opt: torch.optim.Optimizer, run_dir: Path,
             init: Callable[[torch.nn.Module], dict] | None = None, label: str = "") -> dict:
    """The run's state: resumed from run_dir/last.pt, or new (after `init(net)`, whose dict goes in the history)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "elapsed_s": 0.0, "best": -1.0, "history": []}
    last = run_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        print(f"{label}resumed at step {state['step']}", flush=True)
    elif init is not None:
        info = init(net)
        state["history"].append({"step": 0, **info})
        short = {k: v for k, v in info.items() if not isinstance(v, (list, dict))}
        print(f"{label}new run, {short}", flush=True)
    return state


def run_loop(net: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, run_dir: Path, *,
             steps: int, seconds: float, lr: float, val_every: int,
             batch_loss: Callable[[], torch.Tensor], validate: Callable[[], np.ndarray], names: list[str],
             validate_first: bool = False, label: str = "") -> Path:
    """Train until the step or time budget runs out. batch_loss(): the loss of one fresh batch; validate(): a
    (cases, names) array of Dice (NaN where not applicable). Returns run_dir/best.pt."""
    t0 = time.time() - state["elapsed_s"]
    losses: list[float] = []

    def checkpoint() -> None:
        net.eval()
        with torch.no_grad():
            scores = validate()
        net.train()
        per_name = np.nanmean(scores, axis=0)
        mean = float(np.nanmean(per_name))
        state["elapsed_s"] = time.time() - t0
        state["history"].append({"step": state["step"], "loss": float(np.mean(losses[-200:])) if losses else None,
                                 "val_mean_dice": mean, "val_dice": dict(zip(names, map(float, per_name))),
                                 "minutes": state["elapsed_s"] / 60})
        print(f"== {label}step {state['step']} val mean Dice {mean:.4f} " +
              " ".join(f"{o}={d:.3f}" for o, d in zip(names, per_name)), flush=True)
        if mean > state["best"]:
            state["best"] = mean
            torch.save({"net": net.state_dict(), "state": state}, run_dir / "best.pt")
        tmp = run_dir / "last.tmp.pt"
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        tmp.replace(run_dir / "last.pt")

    if validate_first and state["step"] == 0:
        checkpoint()  # the starting weights are a candidate too
    net.train()
    while True:
        elapsed = time.time() - t0
        frac = max(state["step"] / steps, elapsed / seconds)
        if frac >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr * (1 - frac) ** 0.9
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        state["step"] += 1
        if state["step"] % 50 == 0:
            print(f"{label}step {state['step']} loss {np.mean(losses[-50:]):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{elapsed / 60:.1f} min", flush=True)
        if state["step"] % val_every == 0:
            checkpoint()
    checkpoint()
    return run_dir / "best.pt"
