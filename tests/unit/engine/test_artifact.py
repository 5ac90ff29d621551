import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.errors import ArtifactFormatError, BaseModelMismatchError, SpecVersionError
from app.engine.reconstruct import reconstruct
from app.engine.subspace import SubspaceConfig, SubspaceModel


def make_task(theta_len=95, m=105, dtype="float32", **kw) -> TaskArtifact:
    fields = dict(
        model="minilm-l6",
        base_digest="ab" * 32,
        seed=0,
        method="said",
        dim=theta_len + m,
        D=22_713_986,
        labels=["0", "1"],
        text_column="sentence",
        text_pair_column=None,
        max_length=128,
        theta=torch.randn(theta_len),
        lam=1 + 0.1 * torch.randn(m),
        metrics={"eval_accuracy": 0.8543},
        dtype=dtype,
    )
    fields.update(kw)
    return TaskArtifact(**fields)


def test_round_trip_is_exact_and_digest_stable(tmp_path):
    task = make_task()
    size = task.save(tmp_path / "t.safetensors")
    back = TaskArtifact.load(tmp_path / "t.safetensors")
    assert size == (tmp_path / "t.safetensors").stat().st_size
    assert torch.equal(back.theta, task.theta) and torch.equal(back.lam, task.lam)
    assert back.digest == task.digest
    assert back.describe()["D"] == 22_713_986


def test_d200_said_task_in_float16_is_under_a_kilobyte():
    # MiniLM-L6 has m = 105 tensors, so d = 200 is 95 projected coordinates plus 105 scales.
    assert len(make_task(dtype="float16").to_bytes()) < 1024


def test_learning_rate_round_trips_and_is_part_of_the_digest():
    task = make_task(lr=0.1)
    back = TaskArtifact.from_bytes(task.to_bytes())
    assert back.lr == 0.1 and back.digest == task.digest != make_task().digest
    assert "lr" not in make_task().describe()  # files without one hash as before


@pytest.mark.parametrize("lr", [0, -0.1, "0.1", True, float("inf")])
def test_a_malformed_learning_rate_is_refused(lr):
    with pytest.raises(ArtifactFormatError, match="lr must be"):
        make_task(lr=lr)


def test_float16_holds_exactly_the_rounded_values():
    task = make_task(dtype="float16")
    assert torch.equal(task.theta, task.theta.half().float())
    assert torch.equal(TaskArtifact.from_bytes(task.to_bytes()).theta, task.theta)


def test_corrupted_file_is_refused():
    data = bytearray(make_task().to_bytes())
    data[-3] ^= 0xFF  # flip bits inside the vector
    with pytest.raises(ArtifactFormatError, match="digest"):
        TaskArtifact.from_bytes(bytes(data))
    with pytest.raises(ArtifactFormatError, match="not a kilotask task file"):
        TaskArtifact.from_bytes(b"hello world, not safetensors")


def test_other_spec_version_is_refused():
    data = make_task().to_bytes().replace(b"fastfood-v1", b"fastfood-v9")
    with pytest.raises(SpecVersionError, match="fastfood-v9"):
        TaskArtifact.from_bytes(data)


@pytest.mark.parametrize("bad", [torch.tensor([float("nan")] * 95), torch.zeros(3, 5)])
def test_non_finite_or_wrong_shape_vectors_are_refused(bad):
    with pytest.raises(ArtifactFormatError):
        make_task(theta=bad)


def trained_like_task(tiny_bert, method="said", dim=120, seed=3, groups="layer"):
    base = load_base(str(tiny_bert), num_labels=2, seed=seed)
    sub = SubspaceModel(base.model, SubspaceConfig(method, dim, seed, said_groups=groups))
    with torch.no_grad():
        sub.theta.normal_(0, 5)
        if sub.lam is not None:
            sub.lam.uniform_(0.5, 1.5)
    task = TaskArtifact(
        model=str(tiny_bert),
        base_digest=base.digest,
        seed=seed,
        method=method,
        dim=dim,
        D=sub.D,
        labels=["0", "1"],
        text_column="sentence",
        text_pair_column=None,
        max_length=32,
        theta=sub.theta,
        lam=sub.lam,
        **sub.artifact_fields(),
    )
    return sub, task


@pytest.mark.parametrize("method,groups", [("said", "layer"), ("said", "tensor"), ("did", None)])
def test_reconstruction_equals_training_time_weights(tiny_bert, method, groups):
    sub, task = trained_like_task(tiny_bert, method, groups=groups or "layer")
    assert task.said_groups == groups
    ids = torch.tensor([[2, 6, 7, 3]])
    want = sub(input_ids=ids).logits
    rebuilt = reconstruct(load_base(str(tiny_bert), 2, task.seed), task)
    torch.testing.assert_close(rebuilt(input_ids=ids).logits, want, rtol=0, atol=0)
    again = reconstruct(load_base(str(tiny_bert), 2, task.seed), task)
    for (n, a), (_, b) in zip(rebuilt.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_other_base_weights_are_refused(tiny_bert, tmp_path):
    from tests.factories import make_tiny_bert

    _, task = trained_like_task(tiny_bert)
    other = make_tiny_bert(tmp_path / "other", seed=99)
    with pytest.raises(BaseModelMismatchError, match="digest"):
        reconstruct(load_base(str(other), 2, task.seed), task)


def test_a_file_written_before_lowrank_existed_loads_unchanged():
    """tests/golden/said-fastfood-v1-before-lowrank.safetensors was written by the code of
    commit e241364 (before issue 11 added method options to the task file): it must load, with
    the same digest and no rank or targets, and write back the same size (safetensors orders
    metadata keys differently per process, so the bytes themselves are not compared)."""
    from pathlib import Path

    path = Path(__file__).parents[2] / "golden" / "said-fastfood-v1-before-lowrank.safetensors"
    task = TaskArtifact.load(path)
    assert task.digest == "00487667d7c6bcab38d9fb94c71d4f6dc21d2a0cdb760ce604435c19239c2865"
    assert (task.method, task.spec, task.rank, task.targets) == ("said", "fastfood-v1", None, None)
    again = TaskArtifact.from_bytes(task.to_bytes())
    assert again.digest == task.digest and len(task.to_bytes()) == len(path.read_bytes())
