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

    def on_event(self, kind: str, data: dict) -> None:
        """The probe's choice, a held-out slice, an early stop (a degenerate task is the
        command's own warning line)."""
        lines = {
            "lr_probe": lambda: (
                f"learning rate {data.get('lr'):g} picked by a probe, held-out "
                f"loss by rate: {data.get('losses')}"
            ),
            "held_out": lambda: (
                f"no --eval: {data.get('rows')} of {data.get('of')} training "
                "rows held out to evaluate on"
            ),
            "early_stop": lambda: (
                f"stopped early at step {data.get('step')}: no better metric "
                f"since step {data.get('best_step')}"
            ),
        }
        if kind in lines and not self.disabled:
            tqdm.write(lines[kind](), file=sys.stderr)
