"""`--lr auto`: a short probe picks the learning rate, because the rate decides (issue 22: PEFT
LoRA itself went from 0.386 to 0.806 accuracy on one data set with its rate alone).

Each rate of a small grid trains a fresh model for a few steps on the training data less a
held-out slice of it, and the rate with the lowest loss on that slice wins (ties: the smaller
rate). Subspace rates are θ's at d = 1000 (app/engine/step_size.py), so one grid serves every
d. The probe costs len(grid) × `probe_steps(total)` training steps: a quarter of the run on
top of it, at most 4 × 40 steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from app.engine.trainer import TrainCallbacks, TrainConfig, mean_loss, train

SUBSPACE_GRID = (0.05, 0.1, 0.2, 0.4)
FULL_GRID = (2e-5, 5e-5, 1e-4, 2e-4)
HOLDOUT_ROWS = 256  # at most; a fifth of a small training set


def grid_for(method: str) -> tuple[float, ...]:
    return FULL_GRID if method == "full" else SUBSPACE_GRID


def probe_steps(total: int) -> int:
    """Steps per rate: a sixteenth of the run, at least 8 and at most 40 (never more than it)."""
    return min(total, max(8, min(40, total // 16)))


def holdout_rows(train_rows: int) -> int:
    return min(HOLDOUT_ROWS, train_rows // 5)


@dataclass(frozen=True)
class ProbeResult:
    lr: float
    losses: dict[float, float]  # rate -> loss on the held-out slice after the probe
    steps: int  # per rate
    rows: int  # held out

    def as_event(self) -> dict:
        losses = {f"{lr:g}": round(loss, 5) for lr, loss in self.losses.items()}
        return {"lr": self.lr, "steps": self.steps, "held_out_rows": self.rows, "losses": losses}


class _Forward(TrainCallbacks):
    """The probe's runs report nothing but honour a cancel."""

    def __init__(self, outer: TrainCallbacks | None) -> None:
        self.outer = outer

    def should_stop(self) -> bool:
        return self.outer.should_stop() if self.outer is not None else False


def probe_lr(
    make_model: Callable[[], nn.Module],
    train_set,
    held_out,
    config: TrainConfig,
    total: int,
    pad_id: int,
    device,
    callbacks: TrainCallbacks | None = None,
) -> ProbeResult:
    """Train a fresh model (`make_model()`) for probe_steps(total) steps at each rate of the
    method's grid on `train_set`, and pick the rate with the lowest loss on `held_out`."""
    steps = probe_steps(total)
    losses: dict[float, float] = {}
    for lr in grid_for(config.method):
        run = replace(config, learning_rate=lr, max_steps=steps, epochs=None, eval_every=None,
                      checkpoint_every=None, patience=None)  # fmt: skip
        model = make_model()
        train(model, train_set, run, pad_id, None, _Forward(callbacks), None, "", device)
        loss = mean_loss(model, held_out, run, pad_id, device)
        losses[lr] = loss if math.isfinite(loss) else math.inf
    best = min(losses, key=lambda lr: (losses[lr], lr))
    return ProbeResult(best, losses, steps, len(held_out))
