import math

import pytest

from app.engine.metrics import classification_metrics


def test_known_binary_values():
    m = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], 2)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx(1 / math.sqrt(3))
    assert round(m["f1"], 4) == 0.6667 and round(m["mcc"], 4) == 0.5774


def test_binary_mcc_matches_formula():
    # confusion: tp=3, tn=4, fp=2, fn=1
    labels = [1] * 3 + [0] * 4 + [0] * 2 + [1] * 1
    preds = [1] * 3 + [0] * 4 + [1] * 2 + [0] * 1
    tp, tn, fp, fn = 3, 4, 2, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    m = classification_metrics(preds, labels, 2)
    assert m["mcc"] == pytest.approx(expected)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_multiclass_mcc_matches_gorodkin():
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 1, 1, 1, 2, 2, 2, 0, 2]
    # confusion C[true][pred]: [[2,1,0],[0,2,1],[1,0,3]]; c=7, s=10, t=(3,3,4), p=(3,3,4)
    c, s, t, p = 7, 10, (3, 3, 4), (3, 3, 4)
    cov = c * s - sum(a * b for a, b in zip(t, p, strict=True))
    expected = cov / math.sqrt((s**2 - sum(x * x for x in p)) * (s**2 - sum(x * x for x in t)))
    m = classification_metrics(preds, labels, 3)
    assert set(m) == {"accuracy", "mcc", "f1"}
    assert m["accuracy"] == pytest.approx(0.7) and m["mcc"] == pytest.approx(expected)
    # macro-F1: per class 2·tp / (true + predicted) = 4/6, 4/6, 6/8
    assert m["f1"] == pytest.approx((4 / 6 + 4 / 6 + 6 / 8) / 3)


def test_macro_f1_averages_only_the_classes_that_occur():
    # class 3 of 4 never occurs: sklearn's f1_score(average="macro") leaves it out
    m = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], 4)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert classification_metrics([0, 1, 2], [0, 1, 2], 3)["f1"] == 1.0


def test_perfect_inverse_and_undefined():
    assert classification_metrics([0, 1, 2], [0, 1, 2], 3)["mcc"] == pytest.approx(1.0)
    assert classification_metrics([1, 0, 1, 0], [0, 1, 0, 1], 2)["mcc"] == pytest.approx(-1.0)
    constant = classification_metrics([1, 1, 1], [0, 1, 1], 2)
    assert constant["mcc"] == 0.0 and constant["f1"] == pytest.approx(0.8)
    no_positives = classification_metrics([0, 0], [0, 0], 2)
    assert no_positives == {"accuracy": 1.0, "mcc": 0.0, "f1": 0.0}
    assert all(isinstance(v, float) for v in no_positives.values())


def test_bad_input():
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics([], [], 2)
    with pytest.raises(ValueError, match="predictions but"):
        classification_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError, match="class ids"):
        classification_metrics([0, 2], [0, 1], 2)
