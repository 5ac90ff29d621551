"""The training recipe's defaults (issue 22): `learning_rate="auto"` picks the rate with a
probe, a held-out slice stands in for missing eval data, training stops early when the metric
stalls, and a task that does not beat a constant prediction is flagged degenerate."""

import random

import pytest

from app.engine.data import read_table
from app.engine.lr_probe import SUBSPACE_GRID, probe_steps
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig
from tests.factories import sentiment_rows, write_tsv


class Events(TrainCallbacks):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def on_event(self, kind: str, data: dict) -> None:
        self.events.append((kind, data))

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.events if k == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    train = read_table(write_tsv(folder / "train.tsv", sentiment_rows(200, seed=0)))
    dev = read_table(write_tsv(folder / "dev.tsv", sentiment_rows(100, seed=1)))
    rng = random.Random(5)
    noise = [{**r, "label": str(rng.randint(0, 1))} for r in sentiment_rows(300, seed=2)]
    noise_train = read_table(write_tsv(folder / "noise.tsv", noise[:200]))
    noise_dev = read_table(write_tsv(folder / "noise-dev.tsv", noise[200:]))
    return train, dev, noise_train, noise_dev


def _request(tiny_bert, train, dev, **config) -> TrainRequest:
    settings = dict(method="said", max_steps=120, batch_size=16, eval_every=20) | config
    return TrainRequest(str(tiny_bert), train, dev, 150, 2, 16, config=TrainConfig(**settings))


def test_auto_learning_rate_is_picked_by_a_probe_and_reported(tiny_bert, data):
    train, dev, *_ = data
    events = Events()
    out = train_task(_request(tiny_bert, train, dev, learning_rate="auto"), events)
    (probe,) = events.of("lr_probe")
    assert out.probe is not None and out.lr == out.probe.lr == probe["lr"]
    assert set(out.probe.losses) == set(SUBSPACE_GRID) and out.probe.steps == probe_steps(120)
    assert out.probe.losses[out.lr] == min(out.probe.losses.values())
    assert probe["held_out_rows"] == 40  # a fifth of 200 rows, at most 256
    assert out.artifact.lr == out.lr  # the task file says which rate it was trained with
    assert out.recipe == {"lr": out.lr, "probe": probe["losses"]}  # what its row keeps
    assert not out.verdict.degenerate and out.metrics["accuracy"] > 0.8


def test_without_eval_data_a_slice_is_held_out_and_scored(tiny_bert, data):
    train, *_ = data
    events = Events()
    req = _request(tiny_bert, train, None, learning_rate=0.2)
    req.holdout = True
    out = train_task(req, events)
    assert out.held_out_rows == 20 and events.of("held_out") == [{"rows": 20, "of": 200}]
    assert "accuracy" in out.metrics and out.artifact.metrics["eval_accuracy"] > 0.5


def test_random_labels_give_a_degenerate_task_and_say_so(tiny_bert, data):
    *_, noise_train, noise_dev = data
    events = Events()
    out = train_task(_request(tiny_bert, noise_train, noise_dev, learning_rate=0.2), events)
    assert out.verdict.degenerate and out.metrics["degenerate"] == 1.0
    assert out.artifact.metrics["degenerate"] == 1.0  # the task file says it too
    (flag,) = events.of("degenerate")
    assert "no better than ignoring its input" in flag["message"]


def test_a_learnable_task_is_not_flagged(tiny_bert, data):
    train, dev, *_ = data
    out = train_task(_request(tiny_bert, train, dev, learning_rate=0.2))
    assert not out.verdict.degenerate and "degenerate" not in out.artifact.metrics


def test_training_stops_early_when_the_metric_stalls_and_keeps_the_best(tiny_bert, data):
    *_, noise_train, noise_dev = data
    events = Events()
    req = _request(tiny_bert, noise_train, noise_dev, learning_rate=0.2, max_steps=200,
                   eval_every=5, patience=2)  # fmt: skip
    out = train_task(req, events)
    (stop,) = events.of("early_stop")
    assert out.stopped_early and out.step == stop["step"] < 200
    best = max(h["accuracy"] for h in out.history)
    assert out.metrics["accuracy"] == best
