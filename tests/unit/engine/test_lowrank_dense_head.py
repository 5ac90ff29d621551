"""lowrank-v2 on a family whose seeded head has a hidden dense layer (RoBERTa's
classifier.dense, hidden × hidden): that layer moves at rank r from its seeded value instead of
densely, so a resident task no longer holds it whole; training, rebuilding, mixed serving (v1
and v2 rows together) and the PEFT export agree."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from app.engine.base import load_base
from app.engine.export import export_task
from app.engine.lowrank import LowRankConfig, LowRankModel, MixedLowRankModel, output_rows
from app.engine.lowrank.mixed import bytes_per_task
from app.engine.reconstruct import load_task_model
from tests.factories import make_lowrank_task
from tests.model_families import make_family

IDS = torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]])
MASK = (IDS != 0).long()


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return make_family("roberta", tmp_path_factory.mktemp("roberta"))


def _layout(folder, spec: str, num_labels: int = 2):
    base = load_base(str(folder), num_labels=num_labels, seed=0)
    return LowRankModel(base.model, base.seeded, LowRankConfig(20, 0, spec=spec)).layout


def test_v2_moves_the_heads_dense_layer_at_rank_r(roberta):
    v1, v2 = _layout(roberta, "lowrank-v1"), _layout(roberta, "lowrank-v2")
    assert [t.name for t in v2.head_targets] == ["classifier.dense"]
    assert "classifier.dense.weight" in dict(v1.head) and "classifier.dense.weight" not in dict(
        v2.head
    )
    hidden = 32
    saved = hidden * hidden - hidden * v2.rank  # the dense weight, less its rank-r B
    assert bytes_per_task(v1) - bytes_per_task(v2) == 4 * saved


def test_theta_zero_is_the_base_and_the_dense_layer_gets_a_gradient(roberta):
    base = load_base(str(roberta), num_labels=3, seed=4)
    model = LowRankModel(base.model, base.seeded, LowRankConfig(30, 4, scales=False))
    ref = load_base(str(roberta), num_labels=3, seed=4).model(input_ids=IDS, attention_mask=MASK)
    out = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2]))
    assert torch.equal(out.logits, ref.logits)
    out.loss.backward()
    d_a = model.projections[0].d
    assert model.theta.grad[:d_a].abs().sum() > 0 and model.theta.grad[d_a:].abs().sum() > 0


def _tasks(roberta):
    specs = [(0, 2, "lowrank-v2"), (3, 3, "lowrank-v2"), (0, 3, "lowrank-v1"), (3, 2, "lowrank-v2")]
    return [
        make_lowrank_task(str(roberta), num_labels=labels, seed=seed, spec=spec, gen_seed=k)
        for k, (seed, labels, spec) in enumerate(specs)
    ]


def test_mixed_serving_equals_each_tasks_rebuilt_model(roberta):
    tasks = _tasks(roberta)
    refs = [
        torch.softmax(load_task_model(t)[0](input_ids=IDS, attention_mask=MASK).logits, -1)
        for t in tasks
    ]
    serving = MixedLowRankModel(load_base(str(roberta), 2, 0))
    factors = [
        serving.build(LowRankConfig(t.dim, t.seed, t.rank, None, True, t.spec), len(t.labels),
                      t.theta, t.lam)
        for t in tasks
    ]  # fmt: skip
    order = [0, 1, 2, 3, 1, 0]
    ids = IDS[[k % 2 for k in range(len(order))]]
    mask = MASK[[k % 2 for k in range(len(order))]]
    logits = serving.logits([factors[j] for j in order], {"input_ids": ids, "attention_mask": mask})
    rows = output_rows(logits, [len(tasks[j].labels) for j in order])
    for k, j in enumerate(order):
        torch.testing.assert_close(torch.softmax(rows[k], -1), refs[j][k % 2], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
    assert factors[0].nbytes < factors[2].nbytes  # v2 keeps the dense layer at rank r


@pytest.mark.parametrize("spec", ["lowrank-v1", "lowrank-v2"])
def test_peft_export_loads_to_the_same_logits(roberta, tmp_path, spec):
    """v2 saves the merged dense layer with the rest of the head; the head is saved as the one
    module PEFT wraps for SEQ_CLS (`classifier`), which a v1 export of a dense head missed."""
    import peft

    task = make_lowrank_task(str(roberta), num_labels=3, seed=2, spec=spec)
    want = load_task_model(task)[0](input_ids=IDS, attention_mask=MASK).logits
    out = export_task(task, "peft", tmp_path / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(str(roberta), num_labels=3)
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        got = loaded(input_ids=IDS, attention_mask=MASK).logits
    assert (got - want).abs().max().item() <= 1e-5


def test_an_mpnet_base_task_is_a_tenth_of_its_v1_size_resident():
    """mpnet-base's shapes (12 layers, hidden 768, two labels), on the meta device: a v2 task
    holds 316 KB in float32 (its dense head layer at rank 4: 12 KB), a v1 task 2.6 MB."""
    from transformers import MPNetConfig

    from app.engine.lowrank.layout import layout_for

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(MPNetConfig(num_labels=2))
    seeded = frozenset(n for n, _ in model.named_parameters() if n.startswith("classifier."))
    sizes = {
        spec: bytes_per_task(layout_for(model, seeded, LowRankConfig(1000, 0, spec=spec)))
        for spec in ("lowrank-v1", "lowrank-v2")
    }
    assert sizes == {"lowrank-v1": 2_663_432, "lowrank-v2": 316_424}, sizes
