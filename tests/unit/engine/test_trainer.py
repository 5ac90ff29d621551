import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.data import read_table  # noqa: I001
from app.engine.errors import CheckpointError
from app.engine.pipeline import TrainRequest, predict_task, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig, TrainingCancelled, train_probe
from tests.factories import sentiment_rows, write_tsv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    train = read_table(write_tsv(folder / "train.tsv", sentiment_rows(160, seed=0)))
    dev = read_table(write_tsv(folder / "dev.tsv", sentiment_rows(40, seed=1)))
    return train, dev


def request(tiny_bert, data, method="said", **config) -> TrainRequest:
    train, dev = data
    defaults = dict(method=method, max_steps=12, batch_size=16, learning_rate=0.5, eval_every=4)
    defaults.update(config)
    return TrainRequest(
        str(tiny_bert), train, dev, dim=150, seed=2, max_length=16, config=TrainConfig(**defaults)
    )


class StopAt(TrainCallbacks):
    def __init__(self, step: int):
        self.stop_at, self.step = step, 0

    def on_step(self, step, total, loss):
        self.step = step

    def should_stop(self):
        return self.step >= self.stop_at


@pytest.mark.parametrize("method", ["said", "did"])
def test_killed_run_resumes_to_the_same_result(tiny_bert, data, tmp_path, method):
    straight = train_task(request(tiny_bert, data, method))
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(TrainingCancelled):
        train_task(request(tiny_bert, data, method, checkpoint_every=3), StopAt(7), str(ckpt))
    assert ckpt.exists()
    resumed = train_task(request(tiny_bert, data, method, checkpoint_every=3), None, str(ckpt))
    assert resumed.step == straight.step == 12
    assert torch.equal(resumed.artifact.theta, straight.artifact.theta)
    if method == "said":
        assert torch.equal(resumed.artifact.lam, straight.artifact.lam)
    assert resumed.history == straight.history
    assert resumed.artifact.digest == straight.artifact.digest


def test_checkpoint_of_another_run_is_refused(tiny_bert, data, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    train_task(request(tiny_bert, data, max_steps=3, checkpoint_every=3), None, str(ckpt))
    with pytest.raises(CheckpointError, match="another run"):
        train_task(request(tiny_bert, data, max_steps=3, learning_rate=0.1), None, str(ckpt))


def test_best_theta_is_kept_and_reported(tiny_bert, data):
    out = train_task(request(tiny_bert, data, max_steps=12))
    best = max(h["accuracy"] for h in out.history)
    assert out.metrics["accuracy"] == best
    assert out.artifact.metrics["eval_accuracy"] == best
    assert [h["step"] for h in out.history] == [4, 8, 12]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rebuilt_task_predicts_exactly_what_training_reported(tiny_bert, data, tmp_path, dtype):
    req = request(tiny_bert, data)
    req.storage_dtype = dtype
    out = train_task(req)
    path = tmp_path / "task.safetensors"
    out.artifact.save(path)
    pred = predict_task(TaskArtifact.load(path), data[1])
    assert pred.metrics == {k: v for k, v in out.metrics.items() if k in pred.metrics}
    assert "train_accuracy" in out.metrics and "gap" in out.metrics  # the probe, rescored too


def test_each_evaluation_scores_a_fixed_train_sample_and_the_relative_gap(tiny_bert, data):
    out = train_task(request(tiny_bert, data, max_steps=8, train_eval_rows=20))
    for h in out.history:
        if h["accuracy"] == 1:  # undefined where the held-out score is perfect
            assert "gap" not in h
            continue
        assert h["gap"] == pytest.approx(
            (h["train_accuracy"] - h["accuracy"]) / (1 - h["accuracy"])
        )
    assert out.artifact.metrics["train_accuracy"] == out.metrics["train_accuracy"]
    assert out.artifact.metrics["gap"] == out.metrics["gap"]  # not renamed eval_gap
    off = train_task(request(tiny_bert, data, max_steps=8, train_eval_rows=0))
    assert not any(k.startswith("train_") or k == "gap" for k in off.metrics)
    assert off.metrics["accuracy"] == out.metrics["accuracy"]  # scoring it changes no training


def test_the_train_sample_is_the_same_for_every_run():
    rows = [{"input_ids": [i]} for i in range(100)]
    assert train_probe(rows, 10) == train_probe(rows, 10) and len(train_probe(rows, 10)) == 10
    assert train_probe(rows, 10) != rows[:10]  # spread over the set, not its head
    assert train_probe(rows, 500) == rows and train_probe(rows, 0) is None


def test_full_finetuning_learns_the_toy_task(tiny_bert, data):
    out = train_task(
        request(tiny_bert, data, "full", max_steps=60, learning_rate=2e-3, eval_every=20)
    )
    assert out.artifact is None
    assert out.metrics["accuracy"] >= 0.9


def test_subspace_training_moves_theta_and_lowers_loss(tiny_bert, data):
    losses = []

    class Record(TrainCallbacks):
        def on_step(self, step, total, loss):
            losses.append(loss)

    out = train_task(
        request(
            tiny_bert,
            data,
            "did",
            max_steps=30,
            warmup_ratio=0.0,
            schedule="constant",
            learning_rate=0.3,
        ),
        Record(),
    )
    assert out.artifact.theta.abs().sum() > 0
    assert sum(losses[-10:]) < sum(losses[:10])


def test_sentence_pairs_three_classes_and_epochs(tiny_bert, tmp_path):
    import random

    rng = random.Random(3)
    rows = []
    for _ in range(48):
        a, b = rng.sample(["good", "bad", "fine", "dull", "great", "poor"], 2)
        rows.append(
            {
                "premise": f"the movie was {a}",
                "hypothesis": f"the film is {b}",
                "label": rng.choice(["entail", "neutral", "contradict"]),
            }
        )
    data = read_table(write_tsv(tmp_path / "pairs.tsv", rows))
    assert data.columns.text_pair == "hypothesis"
    # metric f1 with three classes: macro-F1 (it used to fail with KeyError: 'f1')
    config = TrainConfig(method="said", epochs=2, batch_size=16, learning_rate=0.3, metric="f1")
    out = train_task(TrainRequest(str(tiny_bert), data, data, 150, 0, 24, config=config))
    assert out.step == 6  # 2 epochs × ceil(48 / 16) batches
    assert [h["step"] for h in out.history] == [3, 6]  # evaluated once per epoch
    assert out.artifact.labels == ["contradict", "entail", "neutral"]
    assert out.artifact.text_pair_column == "hypothesis"
    assert {"accuracy", "mcc", "f1"} <= out.metrics.keys()
    assert out.metrics["f1"] == max(h["f1"] for h in out.history)
    pred = predict_task(out.artifact, data)
    assert pred.metrics == {k: v for k, v in out.metrics.items() if k in pred.metrics}
