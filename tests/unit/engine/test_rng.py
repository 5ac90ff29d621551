"""Seeded dropout without touching the global RNG (issue 16): training reseeds dropout every
step inside `torch.random.fork_rng`, so the process's random state is the same after a run as
before it, the run does not depend on it, and a resumed run still matches an unbroken one
(tests/unit/engine/test_trainer.py::test_killed_run_resumes_to_the_same_result)."""

import torch

from app.engine.base import load_base
from app.engine.data import read_table
from app.engine.methods import TaskSettings, get_method
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainConfig, train
from tests.factories import sentiment_rows, write_tsv


def request(tiny_bert, tmp_path) -> TrainRequest:
    data = read_table(write_tsv(tmp_path / "train.tsv", sentiment_rows(48)))
    config = TrainConfig(max_steps=4, batch_size=16, learning_rate=0.5)
    return TrainRequest(str(tiny_bert), data, data, 150, 2, 16, config=config)


def test_training_leaves_the_global_random_state_alone(tiny_bert, tmp_path):
    from app.engine.data import TokenizedDataset
    from app.engine.task_types import OutputSpace

    req = request(tiny_bert, tmp_path)
    base = load_base(str(tiny_bert), num_labels=2, seed=2)
    model = get_method("said").build(base.model, base.seeded, TaskSettings.of("said", 150, 2))
    ds = TokenizedDataset(req.train_data, base.tokenizer, 16, OutputSpace(labels=("0", "1")))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    train(model, ds, req.config, 0, ds)
    assert torch.equal(torch.get_rng_state(), before)
    train_task(req)  # loading the base (its head's throwaway init) included
    assert torch.equal(torch.get_rng_state(), before)
    assert model.model.training is False and model.theta.abs().sum() > 0


def test_a_run_does_not_depend_on_the_global_random_state(tiny_bert, tmp_path):
    req = request(tiny_bert, tmp_path)
    torch.manual_seed(1)
    a = train_task(req).artifact
    torch.manual_seed(2)
    torch.rand(100)
    b = train_task(req).artifact
    assert torch.equal(a.theta, b.theta) and torch.equal(a.lam, b.lam)
