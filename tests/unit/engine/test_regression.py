"""Regression tasks: one output, MSE on standardised targets, Pearson and Spearman, predictions
as {"score": x}; and a numeric label column is never silently taken for class names."""

import json

import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.data import read_table
from app.engine.errors import ArtifactFormatError, DataFormatError
from app.engine.export import export_task
from app.engine.metrics import pearson, ranks, regression_metrics
from app.engine.pipeline import TrainRequest, predict_task, train_task
from app.engine.reconstruct import load_task_model
from app.engine.task_types import OutputSpace, fit_output_space, looks_numeric
from app.engine.trainer import TrainConfig
from tests.factories import rating_rows, sentiment_rows, write_tsv


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ratings")
    train = write_tsv(folder / "train.tsv", rating_rows(200, seed=0))
    dev = write_tsv(folder / "dev.tsv", rating_rows(60, seed=1))
    return read_table(train), read_table(dev), dev


def regression(tiny_bert, ratings, method="said", **config) -> TrainRequest:
    train, dev, _ = ratings
    # lr 0.27: 0.5 before the learning-rate rule (θ at d = 300 moves by √(1000/d) more)
    settings = dict(method=method, max_steps=40, batch_size=16, learning_rate=0.27, eval_every=20)
    settings.update(config)
    return TrainRequest(
        str(tiny_bert),
        train,
        dev,
        dim=300,
        seed=1,
        max_length=16,
        config=TrainConfig(**settings),
        task_type="regression",
    )


def test_pearson_and_spearman_are_the_textbook_values():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    assert pearson(x, y) == pytest.approx(0.8)
    assert pearson(x, [2 * v + 7 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [3.0] * 5) == 0.0  # a constant side: no correlation to read
    assert ranks([10.0, 20.0, 20.0, 5.0]) == [2.0, 3.5, 3.5, 1.0]  # ties share their mean rank
    m = regression_metrics([1.0, 2.0, 2.0, 9.0], [1.0, 3.0, 2.0, 4.0])
    assert m["spearman"] == pytest.approx(pearson([1.0, 2.5, 2.5, 4.0], [1.0, 3.0, 2.0, 4.0]))
    assert m["mse"] == pytest.approx((0 + 1 + 0 + 25) / 4)
    with pytest.raises(ValueError, match="2 rows"):
        pearson([1.0], [1.0])


def test_a_numeric_label_column_needs_the_task_type_said():
    sts = [f"{v / 7:.3f}" for v in range(36)]  # STS-B-like: 0.000, 0.143, ... 5.000
    assert looks_numeric(sts) and looks_numeric(["0.5", "1", "0"])
    assert not looks_numeric(["0", "1", "2"]) and not looks_numeric(["pos", "neg"])
    with pytest.raises(DataFormatError, match="--task regression") as caught:
        fit_output_space(None, sts)
    assert "36 distinct numbers" in str(caught.value)
    assert fit_output_space(None, ["1", "0", "1"]).labels == ("0", "1")
    assert fit_output_space("classification", ["0.5", "1.5"]).labels == ("0.5", "1.5")
    space = fit_output_space("regression", ["1", "3"])
    assert space.size == 1 and space.target_stats == (2.0, 1.0)
    assert space.targets(["3", "0"]) == [1.0, -2.0]
    with pytest.raises(DataFormatError, match="row 2 has 'high'"):
        fit_output_space("regression", ["1", "high"])
    with pytest.raises(DataFormatError, match="nothing to learn"):
        fit_output_space("regression", ["2", "2.0"])
    with pytest.raises(DataFormatError, match="pearson, spearman"):
        space.check_metric("accuracy")


def test_train_refuses_a_numeric_column_without_the_task_type(tiny_bert, ratings):
    req = regression(tiny_bert, ratings)
    req.task_type = None
    with pytest.raises(DataFormatError, match="--task regression"):
        train_task(req)
    with pytest.raises(DataFormatError, match="does not apply to a regression task"):
        train_task(regression(tiny_bert, ratings, metric="accuracy"))


def test_regression_trains_saves_loads_and_predicts_the_same(tiny_bert, ratings, tmp_path):
    out = train_task(regression(tiny_bert, ratings))
    art = out.artifact
    assert art.task_type == "regression" and art.labels == [] and art.space.size == 1
    mean, std = art.target_stats
    assert 2 < mean < 3 and std > 1
    assert {"pearson", "spearman", "mse", "train_pearson", "gap"} <= set(out.metrics)
    assert out.metrics["pearson"] > 0.5  # learnt, not noise (the words decide the score)
    first = out.history[0]["pearson"]
    assert out.metrics["pearson"] >= first  # the best state is kept
    path = tmp_path / "rating.safetensors"
    assert art.save(path) - 4 * art.dim < 1024  # the vector, and under 1 KB of metadata
    loaded = TaskArtifact.load(path)
    assert loaded.digest == art.digest and loaded.target_stats == art.target_stats
    pred = predict_task(loaded, ratings[1])
    assert set(pred.outputs[0]) == {"score"}
    assert pred.metrics["pearson"] == pytest.approx(out.metrics["pearson"], abs=1e-6)
    assert pred.metrics["mse"] == pytest.approx(out.metrics["mse"], rel=1e-6)
    # the score is the head's output mapped back to the targets' scale
    net, tokenizer = load_task_model(loaded)
    enc = tokenizer(ratings[1].texts[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        raw = net(**enc).logits.reshape(-1)
    want = (raw.double() * std + mean).tolist()
    got = [row["score"] for row in pred.outputs[:3]]
    assert got == pytest.approx(want, abs=1e-5)


def test_theta_zero_predicts_the_training_mean_plus_the_seeded_head(tiny_bert, ratings):
    art = train_task(regression(tiny_bert, ratings, max_steps=2)).artifact
    zero = TaskArtifact(
        **{
            **{f: getattr(art, f) for f in art.__dataclass_fields__},
            "theta": torch.zeros_like(art.theta),
            "lam": torch.zeros_like(art.lam),
            "metrics": {},
        }
    )
    scores = [row["score"] for row in predict_task(zero, ratings[1]).outputs]
    mean, std = art.target_stats
    # a fresh head (std 0.02 weights, zero bias) stays close to 0, i.e. to the mean
    assert all(abs(s - mean) < 0.5 * std for s in scores)


@pytest.mark.parametrize("method", ["did", "lowrank"])
def test_every_method_trains_regression(tiny_bert, ratings, method):
    req = regression(tiny_bert, ratings, method, max_steps=20, learning_rate=0.3)
    req.dim = 30 if method == "lowrank" else req.dim  # lowrank-v2: d up to 1/16 of 545 outputs
    out = train_task(req)
    assert out.artifact.task_type == "regression"
    pred = predict_task(out.artifact, ratings[1])
    assert pred.metrics["pearson"] == pytest.approx(out.metrics["pearson"], abs=1e-6)


def test_a_regression_file_is_checked_and_an_old_file_is_a_classifier(tiny_bert, ratings):
    art = train_task(regression(tiny_bert, ratings, max_steps=2)).artifact
    fields = {f: getattr(art, f) for f in art.__dataclass_fields__}
    for bad in ({"target_stats": None}, {"target_stats": [1.0, 0.0]}, {"labels": ["a", "b"]}):
        with pytest.raises(ArtifactFormatError):
            TaskArtifact(**{**fields, **bad})
    with pytest.raises(ArtifactFormatError, match="task_type"):
        TaskArtifact(**{**fields, "task_type": "ranking"})
    old = TaskArtifact(**{**fields, "task_type": None, "target_stats": None, "labels": ["0", "1"]})
    assert old.space == OutputSpace("classification", ("0", "1"))
    assert "task_type" not in old.describe()  # files from before regression stay byte-equal


def test_exported_hf_model_outputs_the_score_itself(tiny_bert, ratings, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    art = train_task(regression(tiny_bert, ratings, max_steps=10)).artifact
    out = export_task(art, "hf", tmp_path / "hf")
    net = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert net.config.problem_type == "regression" and net.config.num_labels == 1
    texts = ratings[1].texts[:4]
    with torch.no_grad():
        logits = net(**tokenizer(texts, padding=True, return_tensors="pt")).logits.reshape(-1)
    dev = ratings[1]
    dev.texts, dev.labels = texts, None
    want = [row["score"] for row in predict_task(art, dev).outputs]
    assert logits.tolist() == pytest.approx(want, abs=1e-4)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "score"}


def test_classification_is_unchanged_by_default(tiny_bert, tmp_path):
    train = read_table(write_tsv(tmp_path / "t.tsv", sentiment_rows(64, seed=0)))
    req = TrainRequest(
        str(tiny_bert), train, train, dim=150, seed=2, max_length=16,
        config=TrainConfig(max_steps=2, batch_size=16),
    )  # fmt: skip
    out = train_task(req)
    # a classifier's file has no task_type key: byte-equal to the files from before regression
    assert out.artifact.task_type is None and out.artifact.target_stats is None
    assert out.artifact.space.task_type == "classification"
    kept = set(out.artifact.metrics)  # the file keeps the selection metric's train value
    assert {"eval_accuracy", "train_accuracy", "gap"} <= kept and "train_mcc" not in kept
    assert "accuracy" in out.metrics and "train_accuracy" in out.metrics
    row = predict_task(out.artifact, train).outputs[0]
    assert set(row) == {"label", "scores"} and sum(row["scores"].values()) == pytest.approx(1)


def test_the_cli_choices_match_the_engine():
    """app.cli.parser spells the task types and metrics out (parsing imports no torch)."""
    from app.cli import parser as cli
    from app.engine.task_types import METRICS, TASK_TYPES

    assert cli.TASK_TYPES == TASK_TYPES and cli.METRICS == METRICS
