"""Is a trained task better than ignoring its input? A task whose best held-out metric does not
beat the best constant prediction (the majority class; 0 correlation for regression) by two
standard errors is `degenerate`: the user is told, with what to try, instead of getting a task
that only looks trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.metrics import dev_stderr
from app.engine.task_types import OutputSpace

MARGIN_STDERRS = 2.0
HINT = "train longer (--max-steps), raise --dim, or try another --lr"


@dataclass(frozen=True)
class Verdict:
    degenerate: bool
    metric: str
    value: float
    floor: float  # the constant prediction's value of `metric`
    margin: float  # how far above the floor a task must be

    def warning(self) -> str:
        return (
            f"the task's best {self.metric} {self.value:.4f} does not beat always predicting "
            f"{'the majority class' if self.floor_is_majority else 'a constant'} "
            f"({self.floor:.4f}) by {self.margin:.4f} (two standard errors): it is no better "
            f"than ignoring its input; {HINT}"
        )

    @property
    def floor_is_majority(self) -> bool:
        return self.metric not in ("pearson", "spearman")

    def as_metrics(self) -> dict[str, float]:
        """What jobs, tasks and the CLI summary carry: nothing for a task that learned."""
        return {"degenerate": 1.0} if self.degenerate else {}


def judge(
    space: OutputSpace, metric: str, value: float, train: Sequence[str], held_out: Sequence[str]
) -> Verdict:
    """The verdict on a task whose best held-out `metric` is `value`."""
    floor = space.constant_score(list(train), list(held_out), metric)
    at = floor if metric in ("accuracy", "f1") else 0.0  # correlations: at the floor, 0
    stderr = dev_stderr(metric, at, len(held_out)) or 0.0
    margin = MARGIN_STDERRS * stderr
    return Verdict(value <= floor + margin, metric, value, floor, margin)
