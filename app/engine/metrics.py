"""Classification metrics (accuracy, Matthews correlation, F1) in pure Python, so the engine
needs no sklearn and the numbers are exact for any number of classes."""

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


def generalisation(train: dict[str, float], held_out: dict[str, float], metric: str) -> dict:
    """Train-sample metrics as `train_<name>` and the relative generalisation gap of `metric`,
    (train - eval) / train as in the paper's §5; no gap where the train metric is 0."""
    out = {f"train_{k}": v for k, v in train.items()}
    if train.get(metric):
        out["gap"] = (train[metric] - held_out[metric]) / abs(train[metric])
    return out


def reported(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as jobs, tasks and the CLI show them: held-out ones as `eval_<name>`, the
    train-sample ones (`train_<name>`) and the relative `gap` as they are."""
    kept = ("train_", "gap")
    return {k if k.startswith(kept) else f"eval_{k}": v for k, v in metrics.items()}
