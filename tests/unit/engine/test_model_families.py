"""One contract, every family × method (issue 14; PEFT's TEST_CASES style).

Each tiny random family of tests/model_families.py (BERT, RoBERTa, ELECTRA, ALBERT, XLM-R,
DeBERTa-v2, DistilBERT, MPNet, BART, T5) runs the same checks through the engine's own entry
points (load_base, the method registry, train_task, TaskArtifact, load_task_model):

(a) θ = 0 is the base: a fresh subspace model gives the seeded base classifier's logits;
(b) a few training steps give a finite loss and move θ (full: the weights);
(c) the saved task file, loaded and rebuilt, predicts what the trained model predicts
    (full: the saved model folder, loaded again);
(d) a task is refused on another base of the same family (the digest check).

`full` has no θ and no task file, so (a) and (d) do not exist for it; its (c) is the folder.
Every method has default settings on every family, so no pair is skipped; layers named with
another family's names get an error that lists the layers there are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.data import read_table
from app.engine.errors import BaseModelMismatchError, SubspaceConfigError
from app.engine.groups import said_groups_of_model
from app.engine.lowrank import LowRankConfig, LowRankModel
from app.engine.methods import TaskSettings, get_method
from app.engine.pipeline import TrainOutcome, TrainRequest, train_task
from app.engine.reconstruct import load_task_model
from app.engine.trainer import TrainCallbacks, TrainConfig
from tests.factories import sentiment_rows, write_tsv
from tests.model_families import ENCODER_DECODER, FAMILIES, LAYERS, make_family

SUBSPACE = ("did", "said", "lowrank")
METHODS = ("full", *SUBSPACE)
CASES = [(family, method) for family in FAMILIES for method in METHODS]
SUBSPACE_CASES = [case for case in CASES if case[1] != "full"]
DIM, SEED, STEPS, BATCH, MAX_LENGTH = 64, 3, 3, 4, 16
# lowrank-v2 takes d up to 1/16 of its outputs: 24 on tiny ALBERT (one shared layer)
LOWRANK_DIM = 20


def dim_of(method: str) -> int:
    return LOWRANK_DIM if method == "lowrank" else DIM


TEXTS = ["the movie was very good", "awful plot so dull", "great"]  # rows of unequal length


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Callable[[str, int], Path]:
    """family, weight seed -> its saved tiny model, built once per module."""
    built: dict[tuple[str, int], Path] = {}

    def get(family: str, weight_seed: int = 0) -> Path:
        if (family, weight_seed) not in built:
            where = tmp_path_factory.mktemp(f"{family}-{weight_seed}")
            built[family, weight_seed] = make_family(family, where, weight_seed)
        return built[family, weight_seed]

    return get


@dataclass
class Trained:
    outcome: TrainOutcome
    losses: list[float]


class _Losses(TrainCallbacks):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.losses.append(loss)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Callable[[str, str], Trained]:
    """family, method -> one short training run, shared by the checks that need one."""
    data = read_table(write_tsv(tmp_path_factory.mktemp("data") / "t.tsv", sentiment_rows(12)))
    runs: dict[tuple[str, str], Trained] = {}

    def get(family: str, method: str) -> Trained:
        if (family, method) not in runs:
            config = TrainConfig(method=method, max_steps=STEPS, batch_size=BATCH)
            req = TrainRequest(
                str(folder(family)), data, None, dim_of(method), SEED, MAX_LENGTH, config=config
            )
            callbacks = _Losses()
            runs[family, method] = Trained(train_task(req, callbacks), callbacks.losses)
        return runs[family, method]

    return get


def logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    """Logits of TEXTS (padded batch) in eval mode, without gradients."""
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_LENGTH,
                      return_tensors="pt")  # fmt: skip
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family,method", SUBSPACE_CASES)
def test_a_theta_zero_is_the_base(folder, family, method):
    base = load_base(str(folder(family)), num_labels=2, seed=SEED)
    want = logits(base.model, base.tokenizer)
    fresh = load_base(str(folder(family)), num_labels=2, seed=SEED)
    wrapped = get_method(method).build(
        fresh.model, fresh.seeded, TaskSettings.of(method, dim_of(method), SEED), "cpu"
    )
    assert torch.count_nonzero(wrapped.theta) == 0
    torch.testing.assert_close(logits(wrapped, base.tokenizer), want, rtol=0, atol=0)


@pytest.mark.parametrize("family,method", CASES)
def test_b_a_few_steps_train(folder, trained, family, method):
    run = trained(family, method)
    assert len(run.losses) == STEPS and all(torch.isfinite(torch.tensor(run.losses)))
    if method == "full":
        base = load_base(str(folder(family)), num_labels=2, seed=SEED).model
        before = dict(base.named_parameters())
        moved = [
            n for n, p in run.outcome.model.named_parameters() if not torch.equal(p, before[n])
        ]
        assert moved and run.outcome.artifact is None
        return
    task = run.outcome.artifact
    assert task.method == method and task.base_digest and torch.count_nonzero(task.theta) > 0
    if method == "said":  # every group's λ reaches the loss: each moved from 1
        assert (task.lam != 1).all(), task.lam


@pytest.mark.parametrize("family,method", SUBSPACE_CASES)
def test_c_saved_task_rebuilds_to_the_trained_model(trained, tmp_path, family, method):
    outcome = trained(family, method).outcome
    path = tmp_path / "task.safetensors"
    outcome.artifact.save(path)
    task = TaskArtifact.load(path)
    assert task.digest == outcome.artifact.digest
    rebuilt, tokenizer = load_task_model(task)
    want = logits(outcome.model, outcome.tokenizer)
    torch.testing.assert_close(logits(rebuilt, tokenizer), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_c_full_model_folder_reloads_to_the_trained_model(trained, tmp_path, family):
    """`kilotask train --method full` writes the model folder: it loads back as a base whose
    head is the trained one (nothing left to seed)."""
    outcome = trained(family, "full").outcome
    outcome.model.save_pretrained(tmp_path)
    outcome.tokenizer.save_pretrained(tmp_path)
    back = load_base(str(tmp_path), num_labels=2, seed=SEED)
    assert back.seeded == frozenset()
    want = logits(outcome.model, outcome.tokenizer)
    torch.testing.assert_close(logits(back.model, back.tokenizer), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family,method", SUBSPACE_CASES)
def test_d_another_base_of_the_family_is_refused(folder, trained, family, method):
    task = trained(family, method).outcome.artifact
    with pytest.raises(BaseModelMismatchError, match=f"digest {task.base_digest[:12]}"):
        load_task_model(task, str(folder(family, weight_seed=1)))


def expected_said_groups(family: str) -> list[str]:
    """embeddings, one λ per layer (ALBERT: per shared layer; BART, T5: encoder layers, then
    decoder layers, as different layers), then the rest (pooler, head, final norms)."""
    if family == "albert":
        layers = ["layer.0.0"]  # both layers run the one shared layer
    elif family in ENCODER_DECODER:
        layers = [f"{stack}.layer.{i}" for stack in ("encoder", "decoder") for i in range(LAYERS)]
    else:
        layers = [f"layer.{i}" for i in range(LAYERS)]
    return ["embeddings", *layers, "rest"]


@pytest.mark.parametrize("family", FAMILIES)
def test_said_layer_groups_of_each_family(folder, family):
    model = load_base(str(folder(family)), num_labels=2, seed=SEED).model
    groups = said_groups_of_model(model, "layer")
    assert list(groups.names) == expected_said_groups(family)
    names = sorted(n for n, _ in model.named_parameters())
    members = {g: [names[i] for i in idx] for g, idx in groups.members().items()}
    for group, tensors in members.items():
        assert tensors, group
        if group.startswith(("encoder.", "decoder.")):  # its stack and its index, nothing else
            stack, _, index = group.split(".")
            tags = (f".{stack}.layers.{index}.", f".{stack}.block.{index}.")
            assert all(any(t in n for t in tags) for n in tensors), (group, tensors)
    assert any(("classifier" in n or "classification_head" in n) for n in members["rest"])


# Target layers the default lowrank targets adapt: q and v of each attention block, once per
# distinct module (ALBERT's layers share one), and BART's and T5's cross-attention too.
LOWRANK_TARGETS = {family: 2 * LAYERS for family in FAMILIES} | {
    "albert": 2,
    "bart": 3 * 2 * LAYERS,
    "t5": 3 * 2 * LAYERS,
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lowrank_default_targets_of_each_family(folder, trained, family):
    task = trained(family, "lowrank").outcome.artifact
    base = load_base(str(folder(family)), num_labels=2, seed=SEED)
    model = LowRankModel(base.model, base.seeded, LowRankConfig(LOWRANK_DIM, SEED))
    assert len(model.layout.targets) == LOWRANK_TARGETS[family]
    assert task.targets == ",".join(
        sorted({t.name.rsplit(".", 1)[-1] for t in model.layout.targets})
    )


@pytest.mark.parametrize(
    "family,available",
    [("distilbert", "q_lin"), ("t5", "wi"), ("bart", "q_proj")],
)
def test_bert_targets_on_another_family_name_its_layers(folder, family, available):
    base = load_base(str(folder(family)), num_labels=2, seed=SEED)
    settings = TaskSettings.of("lowrank", LOWRANK_DIM, SEED, targets=["query", "value"])
    with pytest.raises(SubspaceConfigError, match=rf"named query, value.*\(.*\b{available}\b"):
        get_method("lowrank").build(base.model, base.seeded, settings)


def test_a_family_without_default_targets_is_told_its_layers():
    """ERNIE (not in DEFAULT_TARGETS) is refused before any work, with the names to pick from."""
    from transformers import AutoModelForSequenceClassification, ErnieConfig

    from app.engine.lowrank.layout import layout_for

    config = ErnieConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)  # fmt: skip
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    seeded = frozenset({"classifier.weight", "classifier.bias"})
    with pytest.raises(SubspaceConfigError, match="type 'ernie'.*named .*\\bquery\\b.*\\bvalue\\b"):
        layout_for(model, seeded, LowRankConfig(LOWRANK_DIM, SEED))
    chosen = layout_for(model, seeded, LowRankConfig(LOWRANK_DIM, SEED, targets=("query", "value")))
    assert [t.name.rsplit(".", 1)[-1] for t in chosen.targets] == ["query", "value"]
