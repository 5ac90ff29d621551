"""SAID's scale groups (issue 16): one λ per layer group by default, one per tensor as an option.

The table of which tensor goes to which group (docs/PROJECTION.md) on tiny random models of every
supported family, m and the smallest d on the real shapes (meta device: names and sizes only),
the math (θ = 0 is the base, λ_g scales every tensor of its group, every λ gets a gradient),
the task file (round trip, files from before groupings rebuild bit for bit) and the registry.
"""

from pathlib import Path

import pytest
import torch
import transformers as T

from app.engine.artifact import TaskArtifact
from app.engine.base import canonical_names, seeded_init_
from app.engine.errors import ArtifactFormatError, SubspaceConfigError
from app.engine.flat import flatten, layout_of
from app.engine.groups import said_groups, said_groups_of_model, said_scale_count
from app.engine.methods import TaskSettings, check_settings, get_method
from app.engine.reconstruct import add_task_delta_, reconstruct, settings_of
from app.engine.subspace import SubspaceConfig, SubspaceModel

GOLDEN = Path(__file__).parents[2] / "golden" / "said-fastfood-v1-before-lowrank.safetensors"
TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=40)  # fmt: skip


def tiny(family: str) -> torch.nn.Module:
    """A tiny random classifier of `family` with 3 layers (ALBERT: 3 layers sharing one)."""
    configs = {
        "bert": lambda: T.BertConfig(**TINY),
        "roberta": lambda: T.RobertaConfig(**TINY),
        "xlm-roberta": lambda: T.XLMRobertaConfig(**TINY),
        "electra": lambda: T.ElectraConfig(**TINY, embedding_size=16),
        "mpnet": lambda: T.MPNetConfig(**TINY),
        "albert": lambda: T.AlbertConfig(**TINY, embedding_size=16),
        "deberta-v2": lambda: T.DebertaV2Config(
            **TINY, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm"
        ),
        "distilbert": lambda: T.DistilBertConfig(
            vocab_size=60, dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=40
        ),
    }
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(configs[family]())
    return model.eval()


def on_meta(config) -> torch.nn.Module:
    with torch.device("meta"):
        return T.AutoModelForSequenceClassification.from_config(config)


# family -> (layers, tensors in `embeddings` beyond the embedding module's own, `rest`)
TABLE = {
    "bert": (3, [], ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                     "classifier.weight"]),
    "roberta": (3, [], ["classifier.dense.bias", "classifier.dense.weight",
                        "classifier.out_proj.bias", "classifier.out_proj.weight"]),
    "xlm-roberta": (3, [], ["classifier.dense.bias", "classifier.dense.weight",
                            "classifier.out_proj.bias", "classifier.out_proj.weight"]),
    "electra": (3, ["electra.embeddings_project.bias", "electra.embeddings_project.weight"],
                ["classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias",
                 "classifier.out_proj.weight"]),
    "mpnet": (3, [], ["classifier.dense.bias", "classifier.dense.weight",
                      "classifier.out_proj.bias", "classifier.out_proj.weight",
                      "mpnet.encoder.relative_attention_bias.weight"]),
    "albert": (1, ["albert.encoder.embedding_hidden_mapping_in.bias",
                   "albert.encoder.embedding_hidden_mapping_in.weight"],
               ["albert.pooler.bias", "albert.pooler.weight", "classifier.bias",
                "classifier.weight"]),
    "deberta-v2": (3, [], ["classifier.bias", "classifier.weight",
                           "deberta.encoder.LayerNorm.bias", "deberta.encoder.LayerNorm.weight",
                           "deberta.encoder.rel_embeddings.weight", "pooler.dense.bias",
                           "pooler.dense.weight"]),
    "distilbert": (3, [], ["classifier.bias", "classifier.weight", "pre_classifier.bias",
                           "pre_classifier.weight"]),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(TABLE))
def test_the_grouping_table(family):
    model = tiny(family)
    names = canonical_names(model)
    groups = said_groups_of_model(model, "layer")
    layers, extra_embeddings, rest = TABLE[family]
    members = {g: [names[i] for i in idx] for g, idx in groups.members().items()}
    layer_keys = ["layer.0.0"] if family == "albert" else [f"layer.{i}" for i in range(layers)]
    assert list(groups.names) == ["embeddings", *layer_keys, "rest"]
    assert groups.m == layers + 2
    assert members["rest"] == rest
    assert all(".embeddings." in n or n in extra_embeddings for n in members["embeddings"])
    assert set(extra_embeddings) <= set(members["embeddings"])
    for key in layer_keys:  # a layer holds exactly the tensors named with its index
        if family == "albert":
            tag = ".albert_layer_groups.0.albert_layers.0."
        else:
            tag = f".layer.{key.split('.')[1]}."
        assert members[key] == [n for n in names if tag in n] and members[key]
    assert sorted(sum(members.values(), [])) == names  # every tensor in exactly one group
    assert said_groups_of_model(model, "tensor").m == len(names)


@pytest.mark.parametrize(
    "config,layer_m,tensor_m",
    [
        (T.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536), 8, 105),  # MiniLM-L6
        (T.BertConfig(), 14, 201),  # BERT-base
        (T.RobertaConfig(), 14, 201),  # RoBERTa-base
        (T.RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096, vocab_size=50265, max_position_embeddings=514,
                         type_vocab_size=1), 26, 393),  # RoBERTa-large
    ],
)  # fmt: skip
def test_m_and_the_smallest_said_d_on_real_shapes(config, layer_m, tensor_m):
    model = on_meta(config)
    said = get_method("said")
    for grouping, m in (("layer", layer_m), ("tensor", tensor_m)):
        assert said_scale_count(model, grouping) == m
        low, high = said.dim_range(
            model, frozenset(), TaskSettings.of("said", 1, said_groups=grouping)
        )
        assert (low, high) == (m + 1, sum(p.numel() for p in model.parameters()))
    # the default is `layer`: RoBERTa-large's smallest SAID d is 27, under the paper's MRPC d90
    assert said.dim_range(model, frozenset(), TaskSettings.of("said", 1))[0] == layer_m + 1
    if layer_m == 26:
        assert layer_m + 1 < 207 < tensor_m + 1


def test_names_that_cannot_be_grouped_are_refused_with_the_way_out():
    gpt2 = on_meta(T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=60, n_positions=40))
    with pytest.raises(SubspaceConfigError, match="no parameter name has a layer index.*tensor"):
        said_groups_of_model(gpt2, "layer")
    assert said_groups_of_model(gpt2, "tensor").m == len(canonical_names(gpt2))
    two_stacks = ["model.embeddings.w", "model.text.layers.0.w", "model.vision.layers.0.w"]
    with pytest.raises(SubspaceConfigError, match="more than one stack.*--said-groups tensor"):
        said_groups(two_stacks, "layer")  # only an encoder and a decoder may be two stacks
    with pytest.raises(SubspaceConfigError, match="no parameter belongs to an 'embeddings'"):
        said_groups(["encoder.layer.0.w", "head.w"], "layer")
    # T5's blocks are its layers (not their sub-layers), its encoder's and decoder's different
    # ones (tests/unit/engine/test_model_families.py trains on both BART and T5)
    t5 = on_meta(T.T5Config(num_layers=2, d_model=32, d_ff=64, num_heads=2, vocab_size=60))
    assert said_groups_of_model(t5, "layer").names[1:-1] == (
        "encoder.layer.0", "encoder.layer.1", "decoder.layer.0", "decoder.layer.1"
    )  # fmt: skip


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert", "deberta-v2"])
def test_theta_zero_is_the_base_and_every_lambda_learns(family):
    model = tiny(family)
    head = frozenset(n for n in canonical_names(model) if "classifier" in n)
    seeded_init_(model, head, seed=1)
    ids = torch.tensor([[1, 5, 9, 12, 2], [1, 7, 8, 2, 0]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    sub = SubspaceModel(model, SubspaceConfig("said", 300, 1))
    assert sub.lam.numel() == TABLE[family][0] + 2
    with torch.no_grad():
        torch.testing.assert_close(sub(input_ids=ids).logits, ref, rtol=0, atol=0)
        sub.theta.normal_(0, 1)  # at θ = 0 the delta is 0, and so is every ∂/∂λ
    sub.train()
    sub(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert (sub.lam.grad != 0).all() and (sub.theta.grad != 0).all()


def test_lambda_g_scales_every_tensor_of_its_group(tiny_bert):
    from app.engine.base import load_base

    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    theta0 = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    sub = SubspaceModel(base.model, SubspaceConfig("said", 200, 1))
    with torch.no_grad():
        sub.theta.normal_()
        sub.lam.copy_(torch.tensor([0.5, 1.5, 2.0, -1.0]))  # embeddings, layer 0, layer 1, rest
    delta = dict(
        zip(sub.names, sub._split(sub.projection.forward(sub.theta.detach())), strict=True)
    )
    got = sub.weights()
    expect = {"bert.embeddings.word_embeddings.weight": 0.5,
              "bert.encoder.layer.0.output.dense.weight": 1.5,
              "bert.encoder.layer.1.attention.self.query.bias": 2.0,
              "bert.pooler.dense.weight": -1.0, "classifier.bias": -1.0}  # fmt: skip
    for name, lam in expect.items():
        torch.testing.assert_close(got[name], theta0[name] + lam * delta[name])


def said_task(base, model_id, grouping, dim=200, seed=0, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    m = said_groups_of_model(base.model, grouping).m
    return TaskArtifact(
        model=model_id, base_digest=base.digest, seed=seed, method="said", dim=dim,
        D=base.num_parameters, labels=["0", "1"], text_column="sentence", text_pair_column=None,
        max_length=16, theta=torch.randn(dim - m, generator=gen) * 10,
        lam=1 + 0.3 * torch.randn(m, generator=gen), said_groups=grouping,
    )  # fmt: skip


@pytest.mark.parametrize("grouping", ["layer", "tensor"])
def test_task_file_round_trip_and_rebuilds(tiny_bert, grouping):
    from app.engine.base import load_base

    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    task = said_task(base, str(tiny_bert), grouping)
    back = TaskArtifact.from_bytes(task.to_bytes())
    assert back.said_groups == back.groups == grouping and back.digest == task.digest
    assert back.describe()["lambdas"] == (4 if grouping == "layer" else 41)
    assert settings_of(back).option_dict == {"said_groups": grouping}
    rebuilt = reconstruct(load_base(str(tiny_bert), 2, 0), back)
    # the serving path (a flat buffer and the base's layout) gives the same weights
    layout = layout_of(base.model)
    flat = flatten(base.model, layout, "cpu")
    add_task_delta_(flat, back, layout)
    for name, p in zip(layout.names, layout.split(flat), strict=True):
        assert torch.equal(dict(rebuilt.named_parameters())[name], p), name
    if grouping == "layer":  # tensor sizes alone cannot say which tensor is in which layer
        with pytest.raises(SubspaceConfigError, match="needs the base's parameter names"):
            add_task_delta_(flatten(base.model, layout, "cpu"), back, layout.sizes)


def test_layer_grouped_d200_said_task_is_under_a_kilobyte():
    task = TaskArtifact(
        model="minilm-l6", base_digest="ab" * 32, seed=0, method="said", dim=200, D=22_713_986,
        labels=["negative", "positive"], text_column="sentence", text_pair_column=None,
        max_length=128, theta=torch.randn(192), lam=torch.ones(8), dtype="float16",
        metrics={"eval_accuracy": 0.8123, "eval_f1": 0.8211, "eval_mcc": 0.62},
        said_groups="layer",
    )  # fmt: skip
    assert len(task.to_bytes()) < 1024


def test_bad_groupings_in_a_task_file_are_refused():
    fields = dict(model="m", base_digest="ab" * 32, seed=0, dim=10, D=100, labels=["0", "1"],
                  text_column="sentence", text_pair_column=None, max_length=16)  # fmt: skip
    with pytest.raises(ArtifactFormatError, match="does not apply to a did task"):
        TaskArtifact(**fields, method="did", theta=torch.zeros(10), lam=None, said_groups="layer")
    with pytest.raises(ArtifactFormatError, match="said_groups must be one of"):
        TaskArtifact(**fields, method="said", theta=torch.zeros(6), lam=torch.ones(4),
                     said_groups="block")  # fmt: skip


def test_a_file_from_before_groupings_is_tensor_and_rebuilds_bit_for_bit():
    """The golden file (MiniLM-L6, 105 tensors, seed 3, d = 120) has no said_groups key: it
    loads as `tensor`, keeps its digest, and its weights are θ_0,i + λ_i·P(θ)_i per tensor i,
    exactly as the code that wrote it computed them (its base digest is a placeholder, so the
    rebuild runs on a MiniLM-shaped model with random weights)."""
    from app.engine.base import resolve_model_path
    from app.engine.projections import get_projection

    task = TaskArtifact.load(GOLDEN)
    assert task.said_groups is None and task.groups == "tensor"
    assert task.digest == "00487667d7c6bcab38d9fb94c71d4f6dc21d2a0cdb760ce604435c19239c2865"
    assert settings_of(task).option_dict == {"said_groups": "tensor"}
    config = T.AutoConfig.from_pretrained(resolve_model_path("minilm-l6"), num_labels=2)
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(config)
    layout = layout_of(model)
    theta0 = flatten(model, layout, "cpu")
    # the old formula, tensor by tensor
    delta = get_projection(15, layout.D, 3, "cpu").forward(task.theta)
    want = torch.empty_like(theta0)
    sizes = layout.sizes
    parts = theta0.split(sizes), delta.split(sizes), task.lam.tolist()
    for out, t0, piece, lam in zip(want.split(sizes), *parts, strict=True):
        torch.add(t0, piece, alpha=lam, out=out)
    wrapped = get_method("said").build(model, frozenset(), settings_of(task))
    wrapped.load_vector(task.theta, task.lam)
    assert torch.equal(wrapped.flat_weights().detach(), want)
    served = theta0.clone()
    add_task_delta_(served, task, layout.sizes)  # serving, given only the tensor sizes
    assert torch.equal(served, want)


def test_registry_takes_said_groups_for_said_only(tiny_bert):
    from app.engine.base import load_base

    base = load_base(str(tiny_bert), num_labels=2, seed=0)
    assert check_settings(base.model, base.seeded, TaskSettings.of("said", 5)) == (
        5,
        base.num_parameters,
    )
    tensor = TaskSettings.of("said", 42, said_groups="tensor")
    assert check_settings(base.model, base.seeded, tensor)[0] == 42
    with pytest.raises(SubspaceConfigError, match="dim must be in \\[42"):
        check_settings(base.model, base.seeded, TaskSettings.of("said", 41, said_groups="tensor"))
    with pytest.raises(SubspaceConfigError, match="said_groups do not apply to method 'did'"):
        check_settings(base.model, base.seeded, TaskSettings.of("did", 41, said_groups="layer"))
