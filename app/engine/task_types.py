"""What a task predicts: one of several classes (classification) or a number (regression).

A task type turns the training labels into an `OutputSpace` (class names, or the targets' mean
and standard deviation), labels into training targets, head outputs into metrics and into what
users see. The trainer, the pipeline, the d90 search and the service ask the space instead of
branching on the type, as methods are looked up in app/engine/methods.py.

Regression trains on standardised targets, (y - mean) / std with the training set's mean and
std stored in the task: a randomly initialised one-output head starts near 0, which is the
mean, and a subspace method cannot afford the large move of one bias that raw 0-5 scores would
ask for. Predictions are mapped back (mean + std * output) before anyone sees them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.errors import DataFormatError
from app.engine.metrics import classification_metrics, regression_metrics

CLASSIFICATION, REGRESSION = "classification", "regression"
TASK_TYPES = (CLASSIFICATION, REGRESSION)
# Numeric labels with more distinct values than this (or any fractional one) look like a
# regression target: a classifier over them is refused unless the task type is given.
MAX_NUMERIC_CLASSES = 20


# Class labels: named by the training set, ordered the same way on every machine.
def label_names_from(labels: list[str]) -> list[str]:
    """The distinct labels, in numeric order if all are integers, else lexicographic."""
    names = set(labels)
    try:
        ordered = sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        ordered = sorted(names)
    if len(ordered) < 2:
        found = f"only {ordered[0]!r}" if ordered else "none"
        raise DataFormatError(f"need at least 2 classes, found {found}.")
    return ordered


def encode_labels(labels: list[str], label_names: list[str]) -> list[int]:
    """Map label strings to their index in `label_names`."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise DataFormatError(
            f"unknown labels {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
            f"({len(unknown)} in all); the known labels are {label_names}."
        )
    return [index[label] for label in labels]


@dataclass(frozen=True)
class OutputSpace:
    """What a task's head outputs mean: class names (classification) or the mean and std of
    the training targets (regression)."""

    task_type: str = CLASSIFICATION
    labels: tuple[str, ...] = ()
    target_stats: tuple[float, float] | None = None  # regression: (mean, std)

    @property
    def kind(self) -> TaskType:
        return _TYPES[self.task_type]

    @property
    def size(self) -> int:
        """Outputs of the head: the number of classes, or 1."""
        return self.kind.size(self)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.kind.metrics

    @property
    def default_metric(self) -> str:
        return self.kind.metrics[0]

    def targets(self, labels: Sequence[str]) -> list:
        return self.kind.targets(self, labels)

    def score(self, outputs: torch.Tensor, targets: Sequence) -> dict[str, float]:
        return self.kind.score(self, outputs, targets)

    def present(self, outputs: torch.Tensor) -> list[dict]:
        return self.kind.present(self, outputs)

    def score_rows(self, rows: Sequence[dict], labels: Sequence[str]) -> dict[str, float]:
        """Metrics of presented predictions (`present`'s rows, e.g. from a server) against
        label strings."""
        return self.kind.score_rows(self, rows, labels)

    def constant_score(self, train: Sequence[str], held_out: Sequence[str], metric: str) -> float:
        """`metric` on `held_out` of the best prediction that ignores the input: the floor a
        d90 search must clear to mean anything."""
        return self.kind.constant_score(self, train, held_out, metric)

    def check_metric(self, metric: str) -> str:
        if metric not in self.metrics:
            raise DataFormatError(
                f"metric {metric!r} does not apply to a {self.task_type} task; use one of "
                f"{', '.join(self.metrics)}."
            )
        return metric


class TaskType:
    """One task type; the first of `metrics` is its default."""

    name: str
    metrics: tuple[str, ...]

    def fit(self, labels: Sequence[str]) -> OutputSpace:
        raise NotImplementedError

    def size(self, space: OutputSpace) -> int:
        raise NotImplementedError

    def targets(self, space: OutputSpace, labels: Sequence[str]) -> list:
        raise NotImplementedError

    def score(self, space: OutputSpace, outputs: torch.Tensor, targets: Sequence) -> dict:
        raise NotImplementedError

    def present(self, space: OutputSpace, outputs: torch.Tensor) -> list[dict]:
        raise NotImplementedError

    def score_rows(self, space: OutputSpace, rows: Sequence[dict], labels: Sequence[str]) -> dict:
        raise NotImplementedError

    def constant_score(
        self, space: OutputSpace, train: Sequence[str], held_out: Sequence[str], metric: str
    ) -> float:
        raise NotImplementedError


class Classification(TaskType):
    name = CLASSIFICATION
    metrics = ("accuracy", "f1", "mcc")

    def fit(self, labels: Sequence[str]) -> OutputSpace:
        return OutputSpace(CLASSIFICATION, tuple(label_names_from(list(labels))))

    def size(self, space: OutputSpace) -> int:
        return len(space.labels)

    def targets(self, space: OutputSpace, labels: Sequence[str]) -> list[int]:
        return encode_labels(list(labels), list(space.labels))

    def score(self, space: OutputSpace, outputs: torch.Tensor, targets: Sequence) -> dict:
        return classification_metrics(outputs.argmax(-1).tolist(), list(targets), space.size)

    def present(self, space: OutputSpace, outputs: torch.Tensor) -> list[dict]:
        probs = torch.softmax(outputs.float(), -1).tolist()
        return [
            {
                "label": space.labels[max(range(len(row)), key=row.__getitem__)],
                "scores": dict(zip(space.labels, row, strict=True)),
            }
            for row in probs
        ]

    def score_rows(self, space: OutputSpace, rows: Sequence[dict], labels: Sequence[str]) -> dict:
        index = {name: i for i, name in enumerate(space.labels)}
        preds = [index[row["label"]] for row in rows]
        return classification_metrics(preds, space.targets(labels), space.size)

    def constant_score(self, space, train, held_out, metric) -> float:
        """Always the training set's most frequent label."""
        from collections import Counter

        majority = space.targets([Counter(train).most_common(1)[0][0]])[0]
        truth = space.targets(held_out)
        return classification_metrics([majority] * len(truth), truth, space.size)[metric]


class Regression(TaskType):
    name = REGRESSION
    metrics = ("pearson", "spearman")

    def fit(self, labels: Sequence[str]) -> OutputSpace:
        values = parse_targets(labels)
        if len(values) < 2:
            raise DataFormatError("regression needs at least 2 training rows.")
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        if not std > 0:
            raise DataFormatError(f"every training target is {values[0]:g}: nothing to learn.")
        # 6 significant digits: what the task file stores is exactly what training used
        return OutputSpace(REGRESSION, (), (float(f"{mean:.6g}"), float(f"{std:.6g}")))

    def size(self, space: OutputSpace) -> int:
        return 1

    def targets(self, space: OutputSpace, labels: Sequence[str]) -> list[float]:
        mean, std = space.target_stats
        return [(v - mean) / std for v in parse_targets(labels)]

    def _values(self, space: OutputSpace, outputs: torch.Tensor) -> list[float]:
        mean, std = space.target_stats
        return (outputs.double().reshape(-1) * std + mean).tolist()

    def score(self, space: OutputSpace, outputs: torch.Tensor, targets: Sequence) -> dict:
        mean, std = space.target_stats
        gold = [t * std + mean for t in targets]
        return regression_metrics(self._values(space, outputs), gold)

    def present(self, space: OutputSpace, outputs: torch.Tensor) -> list[dict]:
        return [{"score": v} for v in self._values(space, outputs)]

    def score_rows(self, space: OutputSpace, rows: Sequence[dict], labels: Sequence[str]) -> dict:
        return regression_metrics([row["score"] for row in rows], parse_targets(labels))

    def constant_score(self, space, train, held_out, metric) -> float:
        """A constant prediction correlates with nothing: 0."""
        return 0.0


_TYPES: dict[str, TaskType] = {t.name: t for t in (Classification(), Regression())}
METRICS = tuple(m for t in _TYPES.values() for m in t.metrics)  # every selectable metric


def parse_targets(labels: Sequence[str]) -> list[float]:
    """Regression targets as floats; a cell that is not a finite number is named."""
    out = []
    for i, label in enumerate(labels):
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataFormatError(
                f"regression targets must be finite numbers; row {i + 1} has {label!r}."
            )
        out.append(value)
    return out


def looks_numeric(labels: Sequence[str]) -> bool:
    """Labels that read as a numeric target rather than class names: all numbers, with a
    fractional one or more than MAX_NUMERIC_CLASSES distinct values."""
    try:
        values = {float(label) for label in labels}
    except ValueError:
        return False
    if not values or not all(math.isfinite(v) for v in values):
        return False
    return len(values) > MAX_NUMERIC_CLASSES or any(v != int(v) for v in values)


def fit_output_space(task_type: str | None, labels: Sequence[str]) -> OutputSpace:
    """The output space of a task trained on `labels`. With no `task_type` the task is a
    classifier, unless the labels look like a numeric target: then nothing is guessed and
    the error says how to choose."""
    if task_type is None:
        if looks_numeric(labels):
            distinct = sorted(set(labels), key=float)
            raise DataFormatError(
                f"the label column holds {len(distinct)} distinct numbers (e.g. "
                f"{', '.join(distinct[:3])} ... {distinct[-1]}): set the task type, regression "
                'for a numeric target (CLI --task regression; REST "task": "regression") '
                "or classification if these are class names."
            )
        task_type = CLASSIFICATION
    return task_kind(task_type).fit(labels)


def task_kind(task_type: str) -> TaskType:
    if task_type not in _TYPES:
        raise DataFormatError(f"task must be one of {', '.join(TASK_TYPES)}, got {task_type!r}.")
    return _TYPES[task_type]
