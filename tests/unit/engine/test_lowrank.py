"""The lowrank method, both specs (v1: one projection; v2: adapters and head projected apart):
exact start at the base, exact gradients, linearity in θ, golden values, mixed-batch serving
equal to each task's own merged model (v1 and v2 rows together too), and the task file."""

from dataclasses import replace

import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.errors import ArtifactFormatError, SubspaceConfigError
from app.engine.lowrank import LowRankConfig, LowRankModel, MixedLowRankModel, output_rows
from app.engine.lowrank.layout import (
    dim_range,
    layout_for,
    projections_for,
    seeded_a,
    target_stream,
    task_factors,
)
from app.engine.reconstruct import reconstruct

IDS = torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]])
MASK = (IDS != 0).long()


SPECS = ("lowrank-v1", "lowrank-v2")


@pytest.fixture(params=SPECS)
def spec(request) -> str:
    return request.param


def _wrap(tiny_bert, spec="lowrank-v2", num_labels=2, seed=0, **cfg):
    """A LowRankModel at d = 60, or the largest d the spec allows below that (lowrank-v2 stops
    at 1/16 of its outputs: 44 on this tiny model at rank 4)."""
    base = load_base(str(tiny_bert), num_labels=num_labels, seed=seed)
    config = LowRankConfig(**{"dim": 60, "seed": seed, "rank": 4, "spec": spec, **cfg})
    high = dim_range(layout_for(base.model, base.seeded, config))[1]
    config = replace(config, dim=min(config.dim, high))
    return base, LowRankModel(base.model, base.seeded, config)


def _task(base, model: LowRankModel, labels=("0", "1")) -> TaskArtifact:
    return TaskArtifact(
        model="tiny",
        base_digest=base.digest,
        seed=model.config.seed,
        method="lowrank",
        dim=model.config.dim,
        D=model.D,
        labels=list(labels),
        text_column="sentence",
        text_pair_column=None,
        max_length=16,
        theta=model.theta,
        lam=model.lam,
        spec=model.config.spec,
        **model.artifact_fields(),
    )


@pytest.mark.parametrize("scales", [True, False])
def test_theta_zero_is_exactly_the_base_with_a_gradient(tiny_bert, spec, scales):
    base, model = _wrap(tiny_bert, spec, num_labels=3, seed=5, scales=scales)
    ref = load_base(str(tiny_bert), num_labels=3, seed=5).model(input_ids=IDS, attention_mask=MASK)
    out = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2]))
    assert torch.equal(out.logits, ref.logits)
    out.loss.backward()
    assert model.theta.grad.abs().sum() > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"theta", "lam"} if scales else {"theta"})


def test_gradcheck_float64(tiny_bert, spec):
    """θ, λ -> factors, and θ -> logits through the hooked model, against finite differences."""
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    model = LowRankModel(base.model.double(), base.seeded, LowRankConfig(20, 0, rank=2, spec=spec),
                         dtype=torch.float64)  # fmt: skip
    model.projections = projections_for(model.layout, 20, 0, "cpu", torch.float64)
    theta = torch.randn(model.d_proj, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(model.layout.num_scales, dtype=torch.float64, requires_grad=True)

    def factors(t, lm):
        bs, heads = task_factors(model.layout, t, lm, model.projections)
        return torch.cat([v.reshape(-1) for v in bs + heads])

    assert torch.autograd.gradcheck(factors, (theta, lam), fast_mode=True)

    def logits(t):
        model.theta = t  # the forward reads θ from the module
        return model(input_ids=IDS, attention_mask=MASK).logits

    model.lam = torch.nn.Parameter(lam.detach())
    del model._parameters["theta"]
    assert torch.autograd.gradcheck(logits, (theta,), fast_mode=True)


def test_linear_in_theta_when_lambda_is_fixed(tiny_bert, spec):
    _, model = _wrap(tiny_bert, spec, scales=False)
    x, y = torch.randn(model.d_proj), torch.randn(model.d_proj)

    def f(t):
        bs, heads = task_factors(model.layout, t, None, model.projections)
        return torch.cat([v.reshape(-1) for v in bs + heads])

    torch.testing.assert_close(f(2 * x - 3 * y), 2 * f(x) - 3 * f(y), rtol=1e-5, atol=1e-6)


def test_every_theta_coordinate_reaches_the_output(tiny_bert, spec):
    _, model = _wrap(tiny_bert, spec)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert (model.theta.grad != 0).all()


def test_golden_a_and_stream():
    from app.engine.lowrank.layout import Target

    t = Target("bert.encoder.layer.0.attention.self.query", 4, 3)
    assert target_stream(t.name) == 3488370656
    a = seeded_a(7, t, 2)
    expected = torch.tensor(
        [
            [-0.38636285066604614, 0.8819917440414429, -0.3794018030166626],
            [0.0182102732360363, 0.9608892202377319, -0.31613242626190186],
        ]
    )
    torch.testing.assert_close(a, expected, rtol=0, atol=0)
    # rank r is the first r rows of a larger rank: a task's A does not depend on other tasks
    assert torch.equal(seeded_a(7, t, 5)[:2], a)


def test_golden_factors():
    """θ -> B and head deltas for a fixed layout (spec lowrank-v1: the fastfood-v1 projection
    of θ, split in layout order, B row-major). If this fails, stored lowrank tasks change."""
    from app.engine.lowrank.layout import LowRankLayout, Target

    layout = LowRankLayout(
        2,
        (Target("l.0.query", 3, 5), Target("l.0.value", 2, 5)),
        (("classifier.bias", (2,)), ("classifier.weight", (2, 5))),
        False,
    )
    projections = projections_for(layout, 6, 3, "cpu", torch.float64)
    theta = torch.arange(1.0, 7.0, dtype=torch.float64)
    bs, heads = task_factors(layout, theta, None, projections)
    assert [tuple(b.shape) for b in bs] == [(3, 2), (2, 2)]
    torch.testing.assert_close(
        bs[1].reshape(-1),
        torch.tensor([-1.2152921901152796, 1.5682310521141583, -0.0330408511893496,
                      -1.9516395195614311], dtype=torch.float64),
    )  # fmt: skip
    torch.testing.assert_close(
        heads[0], torch.tensor([-0.8670338788153568, -0.6388645571444448], dtype=torch.float64)
    )
    assert bs[0][0, 0].item() == pytest.approx(1.7846216318312091, abs=1e-12)


def test_merged_model_equals_the_hooked_one(tiny_bert, spec):
    base, model = _wrap(tiny_bert, spec)
    with torch.no_grad():
        model.theta.normal_(0, 3)
        model.lam.uniform_(0.5, 1.5)
    hooked = model(input_ids=IDS, attention_mask=MASK).logits
    merged = model.materialize()(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(merged, hooked, rtol=1e-5, atol=1e-6)


def test_reconstruct_from_the_task_file(tiny_bert, tmp_path, spec):
    base, model = _wrap(tiny_bert, spec, num_labels=3, seed=2)
    with torch.no_grad():
        model.theta.normal_(0, 3)
        model.lam.uniform_(0.5, 1.5)
    want = model(input_ids=IDS, attention_mask=MASK).logits
    task = _task(base, model, labels=("a", "b", "c"))
    task.save(tmp_path / "t.safetensors")
    loaded = TaskArtifact.load(tmp_path / "t.safetensors")
    assert (loaded.rank, loaded.targets, loaded.spec) == (4, "query,value", spec)
    net = reconstruct(load_base(str(tiny_bert), 3, 2), loaded)
    torch.testing.assert_close(net(input_ids=IDS, attention_mask=MASK).logits, want,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("mix", ["lowrank-v1", "lowrank-v2", "both"])
def test_mixed_batch_equals_each_tasks_own_model(tiny_bert, mix):
    """Rows of 6 tasks (two seeds, two label counts, two ranks, two target sets; one spec, or
    v1 and v2 tasks together) in one pass."""
    specs = [(0, 2, 4, None), (0, 2, 4, None), (1, 3, 4, None), (1, 2, 2, ("value",)),
             (0, 3, 2, ("query", "key")), (1, 3, 4, None)]  # fmt: skip
    tasks, refs = [], []
    for i, (seed, labels, rank, targets) in enumerate(specs):
        spec = SPECS[i % 2] if mix == "both" else mix
        base, model = _wrap(tiny_bert, spec, num_labels=labels, seed=seed, rank=rank,
                            targets=targets)  # fmt: skip
        with torch.no_grad():
            torch.manual_seed(i)
            model.theta.normal_(0, 3)
            model.lam.uniform_(0.5, 1.5)
        tasks.append(_task(base, model, labels=[str(k) for k in range(labels)]))
        refs.append(
            torch.softmax(model.materialize()(input_ids=IDS, attention_mask=MASK).logits, -1)
        )
    serving = MixedLowRankModel(load_base(str(tiny_bert), 2, 0))
    factors = [
        serving.build(
            LowRankConfig(t.dim, t.seed, t.rank, tuple(t.targets.split(",")), t.lam is not None,
                          t.spec),
            len(t.labels), t.theta, t.lam,
        )
        for t in tasks
    ]  # fmt: skip
    order = [0, 3, 1, 5, 2, 4, 4, 0]  # repeated tasks and every pairing
    ids = IDS[[k % 2 for k in range(len(order))]]
    mask = MASK[[k % 2 for k in range(len(order))]]
    logits = serving.logits([factors[j] for j in order], {"input_ids": ids, "attention_mask": mask})
    probs = [
        torch.softmax(r, -1) for r in output_rows(logits, [len(tasks[j].labels) for j in order])
    ]
    for k, j in enumerate(order):
        torch.testing.assert_close(probs[k], refs[j][k % 2], rtol=1e-5, atol=1e-6)
    # one task alone takes the single-task path; the same numbers
    alone = serving.logits([factors[2]] * 2, {"input_ids": IDS, "attention_mask": MASK})
    torch.testing.assert_close(torch.softmax(alone, -1), refs[2], rtol=1e-5, atol=1e-6)
    # the shared base is untouched: no context, base logits
    plain = serving.model(input_ids=IDS, attention_mask=MASK).logits
    ref = load_base(str(tiny_bert), 2, 0).model(input_ids=IDS, attention_mask=MASK).logits
    assert torch.equal(plain, ref)


def test_bad_settings_say_what_to_fix(tiny_bert):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    with pytest.raises(SubspaceConfigError, match="rank must be in"):
        LowRankConfig(rank=0)
    with pytest.raises(SubspaceConfigError, match="no nn.Linear layer"):
        LowRankModel(base.model, base.seeded, LowRankConfig(dim=50, targets=("nope",)))
    with pytest.raises(SubspaceConfigError, match="dim must be in"):
        LowRankModel(base.model, base.seeded, LowRankConfig(dim=3))


def test_task_file_checks_rank_and_spec(tiny_bert, spec):
    base, model = _wrap(tiny_bert, spec)
    task = _task(base, model)
    with pytest.raises(ArtifactFormatError, match="rank"):
        TaskArtifact(**{**task.__dict__, "rank": None})
    from app.engine.errors import SpecVersionError

    with pytest.raises(SpecVersionError):
        TaskArtifact(**{**task.__dict__, "spec": "fastfood-v1"})


@pytest.mark.parametrize("spec", SPECS)
def test_d200_float16_file_is_under_a_kilobyte(spec):
    """A d = 200 lowrank task in float16, with the metadata a trained SST-2 task carries
    (the learning rate it was trained with included)."""
    m = 14  # 12 targets (query, value × 6 layers) + 2 head tensors, as on MiniLM-L6
    task = TaskArtifact(
        model="minilm-l6", base_digest="ab" * 32, seed=0, method="lowrank", dim=200,
        D=22_713_986, labels=["0", "1"], text_column="sentence", text_pair_column=None,
        max_length=64, theta=torch.randn(200 - m), lam=torch.ones(m), dtype="float16",
        metrics={"eval_accuracy": 0.7694954, "eval_f1": 0.7598566, "eval_mcc": 0.5435414},
        spec=spec, rank=4, targets="query,value",
        lr=0.1,
    )  # fmt: skip
    size = len(task.to_bytes())
    assert size <= 1024, size
    assert TaskArtifact.from_bytes(task.to_bytes()).digest == task.digest


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_give_the_same_predictions(tiny_bert, spec):
    base, model = _wrap(tiny_bert, spec, num_labels=3, seed=1)
    with torch.no_grad():
        model.theta.normal_(0, 3)
    task = _task(base, model, labels=("a", "b", "c"))
    config = LowRankConfig(task.dim, task.seed, task.rank, ("query", "value"), True, spec)
    probs = []
    for device in ("cpu", "cuda"):
        serving = MixedLowRankModel(load_base(str(tiny_bert), 2, 0), device)
        f = serving.build(config, 3, task.theta, task.lam)
        enc = {"input_ids": IDS.to(device), "attention_mask": MASK.to(device)}
        probs.append(torch.softmax(serving.logits([f, f], enc), -1).cpu())
    torch.testing.assert_close(probs[1], probs[0], rtol=1e-4, atol=1e-5)
