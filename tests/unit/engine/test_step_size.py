"""The learning-rate rule (app/engine/step_size.py): one training step moves the weights about
as far at d = 200 as at d = 20,000, for every subspace method. Without the rule the distance
grows as √d (a factor 10 over this range)."""

import pytest
import torch

from app.engine.base import load_base
from app.engine.data import read_table
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainConfig
from tests.factories import make_tiny_bert, sentiment_rows, write_tsv

DIMS = (200, 1000, 5000, 20_000)
# lowrank needs an output much larger than d (docs/PROJECTION.md): rank 64 on every dense layer
METHODS = {
    "said": {},
    "did": {},
    "lowrank": {"rank": 64, "targets": ["query", "key", "value", "dense"]},
}


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory):
    """A random BERT of hidden 256, 3 layers (1.6 M parameters): room for d = 20,000 in every
    method (lowrank-v2 takes d up to 1/16 of its 370,000 outputs here)."""
    return make_tiny_bert(tmp_path_factory.mktemp("wide-bert"), hidden=256, layers=3)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = write_tsv(tmp_path_factory.mktemp("rows") / "train.tsv", sentiment_rows(32))
    return read_table(path)


def one_step_change(model_dir, rows, method: str, dim: int) -> float:
    """‖ΔW‖ over every weight of the classifier after one step at lr 0.2."""
    config = TrainConfig(method=method, max_steps=1, batch_size=32, learning_rate=0.2,
                         warmup_ratio=0.0, schedule="constant", train_eval_rows=0)  # fmt: skip
    req = TrainRequest(str(model_dir), rows, None, dim, 0, 16, config=config,
                       options=METHODS[method])  # fmt: skip
    trained = train_task(req).model
    before = load_base(str(model_dir), num_labels=2, seed=0).model
    after = dict(trained.named_parameters())
    with torch.no_grad():
        squares = sum(((after[n] - p) ** 2).sum() for n, p in before.named_parameters())
    return float(torch.sqrt(squares))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_moves_the_weights_as_far_at_every_d(wide_bert, rows, method):
    changes = {d: one_step_change(wide_bert, rows, method, d) for d in DIMS}
    print(f"\n{method}: ‖ΔW‖ after one step by d", changes)
    assert max(changes.values()) / min(changes.values()) < 1.5, changes
