import pytest
import torch

from app.engine.base import base_digest, canonical_names, load_base
from app.engine.errors import SubspaceConfigError
from app.engine.subspace import SubspaceConfig, SubspaceModel, subspace_weights

IDS = torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]])
MASK = (IDS != 0).long()


@pytest.mark.parametrize("method,dim", [("said", 200), ("did", 50)])
def test_starts_exactly_at_theta0(tiny_bert, method, dim):
    base = load_base(str(tiny_bert), num_labels=3, seed=4)
    ref = base.model(input_ids=IDS, attention_mask=MASK).logits
    sub = SubspaceModel(base.model, SubspaceConfig(method, dim, seed=4))
    assert torch.equal(sub(input_ids=IDS, attention_mask=MASK).logits, ref)


@pytest.mark.parametrize("groups", ["layer", "tensor"])
def test_only_theta_and_lambda_train_and_d_counts_lambdas(tiny_bert, groups):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    # tiny BERT: 2 layers, so by layer m = embeddings + 2 layers + rest
    m = len(canonical_names(base.model)) if groups == "tensor" else 4
    sub = SubspaceModel(base.model, SubspaceConfig("said", 300, 0, said_groups=groups))
    trainable = {n: p.numel() for n, p in sub.named_parameters() if p.requires_grad}
    assert trainable == {"theta": 300 - m, "lam": m}
    assert sub.num_scales == m
    assert base.num_parameters == sub.D


def test_layer_is_the_default_grouping(tiny_bert):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    sub = SubspaceModel(base.model, SubspaceConfig("said", 300, 0))
    assert sub.config.said_groups == "layer" and sub.lam.numel() == 4
    assert sub.artifact_fields() == {"said_groups": "layer"}


@pytest.mark.parametrize("groups", ["layer", "tensor"])
def test_gradcheck_theta_and_lambda_float64(tiny_bert, groups):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    config = SubspaceConfig("said", 150, 2, said_groups=groups)
    sub = SubspaceModel(base.model.double(), config, dtype=torch.float64)
    theta = torch.randn(sub.d_proj, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(sub.num_scales, dtype=torch.float64, requires_grad=True)

    def weights(t, lm):
        return subspace_weights(sub.theta0, t, lm, sub.segment, sub.projection, sub.segment_groups)

    assert torch.autograd.gradcheck(weights, (theta, lam), fast_mode=True)


def test_gradient_flows_to_every_theta_coordinate(tiny_bert):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    sub = SubspaceModel(base.model, SubspaceConfig("did", 500, 0))
    loss = sub(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert (sub.theta.grad != 0).all()


@pytest.mark.parametrize("groups", ["layer", "tensor"])
def test_said_weights_follow_equation_3(tiny_bert, groups):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    theta0 = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    sub = SubspaceModel(base.model, SubspaceConfig("said", 200, 1, said_groups=groups))
    with torch.no_grad():
        sub.theta.normal_()
        sub.lam.uniform_(0.5, 2.0)
    delta = sub.projection.forward(sub.theta.detach())
    got = sub.weights()
    offset = 0
    for i, name in enumerate(sub.names):
        size = theta0[name].numel()
        lam = sub.lam[sub.groups.of_tensor[i]]  # θ_i = θ_0,i + λ_g(i)·P(θ)_i
        want = theta0[name] + lam * delta[offset : offset + size].view_as(theta0[name])
        torch.testing.assert_close(got[name], want)
        offset += size


@pytest.mark.parametrize(
    "config,match",
    [
        (SubspaceConfig("said", 4, 0), "SAID spends 4 of d on scales, one per layer group"),
        (SubspaceConfig("said", 40, 0, said_groups="tensor"), "SAID spends 41"),
        (SubspaceConfig("said", 400, 0, said_groups="block"), "SAID groups must be one of"),
        (SubspaceConfig("did", 10**9, 0), "dim must be"),
        (SubspaceConfig("lora", 10, 0), "method must be"),
        (SubspaceConfig("did", 10, -1), "seed must be"),
        (SubspaceConfig("did", 10, 0, spec="fastfood-v0"), "spec"),
    ],
)
def test_bad_configs_are_refused(tiny_bert, config, match):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    with pytest.raises(SubspaceConfigError, match=match):
        SubspaceModel(base.model, config)


def test_head_comes_from_the_seed_not_torch_rng(tiny_bert):
    torch.manual_seed(1)
    a = load_base(str(tiny_bert), num_labels=2, seed=5)
    torch.manual_seed(2)
    b = load_base(str(tiny_bert), num_labels=2, seed=5)
    c = load_base(str(tiny_bert), num_labels=2, seed=6)
    assert a.seeded == {"classifier.weight", "classifier.bias"}
    for name in a.seeded:
        wa, wb = (dict(m.model.named_parameters())[name] for m in (a, b))
        assert torch.equal(wa, wb)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    assert a.digest == c.digest  # the digest covers the base, not the seeded head


def test_digest_changes_with_any_base_weight(tiny_bert):
    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    before = base_digest(base.model, base.seeded)
    with torch.no_grad():
        base.model.bert.embeddings.LayerNorm.bias[0] += 1e-6
    assert base_digest(base.model, base.seeded) != before


def test_roberta_family_works_too():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from app.engine.base import seeded_init_

    config = RobertaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=40,
    )
    model = RobertaForSequenceClassification(config).eval()
    head = frozenset(n for n, _ in model.named_parameters() if n.startswith("classifier."))
    seeded_init_(model, head, seed=1)
    ids = torch.tensor([[0, 5, 9, 12, 2]])
    ref = model(input_ids=ids).logits
    sub = SubspaceModel(model, SubspaceConfig("said", 200, 1))
    torch.testing.assert_close(sub(input_ids=ids).logits, ref, rtol=0, atol=0)
    sub(input_ids=ids, labels=torch.tensor([2])).loss.backward()
    assert (sub.theta.grad != 0).all()
