"""Classification metrics (accuracy, Matthews correlation, F1) and regression metrics (Pearson,
Spearman, MSE) in pure Python, so the engine needs no sklearn or scipy and the numbers are exact
for any number of classes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def confusion_matrix(
    preds: Sequence[int], labels: Sequence[int], num_classes: int
) -> list[list[int]]:
    """counts[true][pred]."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    if not preds:
        raise ValueError("no predictions to score")
    counts = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(preds, labels, strict=True):
        if not (0 <= p < num_classes and 0 <= t < num_classes):
            raise ValueError(f"class ids must lie in [0, {num_classes}); got pred {p}, label {t}")
        counts[t][p] += 1
    return counts


def classification_metrics(
    preds: Sequence[int], labels: Sequence[int], num_classes: int
) -> dict[str, float]:
    """accuracy, mcc (Gorodkin's multiclass R_K; 0.0 when undefined) and f1: with two classes
    the F1 of class 1 (GLUE's convention; 0.0 when undefined), with more the macro-F1, the mean
    F1 over the classes that occur in the labels or the predictions (sklearn's
    `f1_score(average="macro")`)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    counts = confusion_matrix(preds, labels, num_classes)
    n = len(preds)
    correct = sum(counts[k][k] for k in range(num_classes))
    true_k = [sum(row) for row in counts]
    pred_k = [sum(col) for col in zip(*counts, strict=True)]
    cov = correct * n - sum(t * p for t, p in zip(true_k, pred_k, strict=True))
    denom = (n * n - sum(p * p for p in pred_k)) * (n * n - sum(t * t for t in true_k))
    out = {"accuracy": correct / n, "mcc": cov / math.sqrt(denom) if denom else 0.0}
    if num_classes == 2:
        tp, fp, fn = counts[1][1], counts[0][1], counts[1][0]
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    else:
        present = [k for k in range(num_classes) if true_k[k] + pred_k[k]]
        out["f1"] = sum(2 * counts[k][k] / (true_k[k] + pred_k[k]) for k in present) / len(present)
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; 0.0 when either side is constant (no linear relation can be read)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} predictions but {len(y)} targets")
    if len(x) < 2:
        raise ValueError("a correlation needs at least 2 rows")
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (as scipy's rankdata)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def regression_metrics(preds: Sequence[float], targets: Sequence[float]) -> dict[str, float]:
    """pearson, spearman (Pearson's r of the ranks) and mse, on the targets' own scale."""
    r = pearson(preds, targets)  # checks the lengths first
    return {
        "pearson": r,
        "spearman": pearson(ranks(preds), ranks(targets)),
        "mse": math.fsum((p - t) ** 2 for p, t in zip(preds, targets, strict=True)) / len(preds),
    }


def relative_gap(train: float, held_out: float) -> float | None:
    """The paper's relative generalisation gap (§5.3), (train - eval) / (1 - eval): the share
    of the held-out shortfall from a perfect score that the train sample does not show. None
    where the held-out metric is already perfect (the gap is undefined there)."""
    return (train - held_out) / (1 - held_out) if held_out < 1 else None


def generalisation(train: dict[str, float], held_out: dict[str, float], metric: str) -> dict:
    """Train-sample metrics as `train_<name>` and the relative gap of `metric` as `gap`."""
    out = {f"train_{k}": v for k, v in train.items()}
    gap = relative_gap(train[metric], held_out[metric])
    if gap is not None:
        out["gap"] = gap
    return out


def reported(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as jobs, tasks and the CLI show them: held-out ones as `eval_<name>`, the
    train-sample ones (`train_<name>`) and the relative `gap` as they are."""
    kept = ("train_", "gap", "degenerate")
    return {k if k.startswith(kept) else f"eval_{k}": v for k, v in metrics.items()}


def kept_in_task(reported_metrics: dict[str, float], metric: str) -> dict[str, float]:
    """What a task file keeps of the reported metrics: the held-out ones, the train sample's
    value of the selection `metric` and the gap, so that a d=200 task stays under 1 KB (jobs
    and the CLI summary show every train-sample metric)."""
    kept = (f"train_{metric}", "gap", "degenerate")
    return {k: v for k, v in reported_metrics.items() if k.startswith("eval_") or k in kept}


def dev_stderr(metric: str, value: float, n: int, positives: int | None = None) -> float | None:
    """Standard error of a dev-set metric from its `n` rows: a proportion's sqrt(p(1-p)/n) for
    accuracy; for binary F1, the same over the `positives` rows (F1 is a share of the positive
    class's predictions and labels, so about that many rows decide it), and over all n rows for
    macro-F1 (`positives` None: a mean of k class F1s over about n/k rows each); for MCC,
    Pearson and Spearman, a correlation's (1 - r²) / sqrt(n - 1). None when it cannot be told."""
    if metric == "accuracy" and n > 0:
        return math.sqrt(max(value * (1 - value), 0.0) / n)
    rows = n if positives is None else positives
    if metric == "f1" and rows > 0:
        return math.sqrt(max(value * (1 - value), 0.0) / rows)
    if metric in ("mcc", "pearson", "spearman") and n > 1:
        return (1 - value * value) / math.sqrt(n - 1)
    return None
