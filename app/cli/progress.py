"""A tqdm progress bar on stderr that plugs into the trainer's callbacks."""

from __future__ import annotations

import sys

from tqdm import tqdm

from app.engine.trainer import TrainCallbacks


class ProgressBar(TrainCallbacks):
    def __init__(self, disabled: bool = False) -> None:
        self.disabled = disabled
        self.bar: tqdm | None = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                initial=step - 1,
                file=sys.stderr,
                disable=self.disabled,
                desc="train",
                dynamic_ncols=True,
            )
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            line = f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            self.bar.write(line, file=sys.stderr)
