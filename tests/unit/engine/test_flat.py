"""Flat-buffer rebuild (the serving path) against `reconstruct` (the reference path)."""

import torch
from torch import nn

from app.engine.base import load_base, seeded_init_
from app.engine.flat import bind, flatten, layout_of, share_, skeleton
from app.engine.reconstruct import add_task_delta_, reconstruct
from tests.factories import make_task


def rebuild_flat(base, task):
    layout = layout_of(base.model)
    flat = flatten(base.model, layout, "cpu")
    model = bind(skeleton(base.model), layout, flat)
    seeded_init_(model, base.seeded, task.seed)
    add_task_delta_(flat, task, layout.sizes)
    return model, flat


def test_flat_rebuild_equals_reconstruct_for_said_and_did(tiny_bert):
    base = load_base(str(tiny_bert), 2, 0)
    m = len(list(base.model.parameters()))
    gen = torch.Generator().manual_seed(3)
    for task in (
        make_task(
            str(tiny_bert),
            base,
            seed=5,
            theta=torch.randn(100 - m, generator=gen) * 20,
            lam=1 + torch.rand(m, generator=gen),
        ),
        make_task(
            str(tiny_bert), base, method="did", lam=None, theta=torch.randn(100, generator=gen) * 20
        ),
    ):
        model, flat = rebuild_flat(base, task)
        want = reconstruct(load_base(str(tiny_bert), 2, task.seed), task)
        got, ref = dict(model.named_parameters()), dict(want.named_parameters())
        assert got.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)
            assert got[name].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        ids = torch.tensor([[1, 5, 6, 2]])
        assert not model.training
        torch.testing.assert_close(model(input_ids=ids).logits, want(input_ids=ids).logits)


class Tied(nn.Module):
    """Two layers sharing one weight, as tied embeddings do."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight


def test_bind_keeps_tied_parameters_tied_and_allocates_no_weights():
    src = Tied()
    layout = layout_of(src)
    assert layout.D == 9 + 3 + 3  # the shared weight counts once
    skel = skeleton(src)
    assert all(p.is_meta for p in skel.parameters())
    flat = flatten(src, layout, "cpu")
    model = bind(skel, layout, flat)
    assert model.a.weight is model.b.weight
    flat.zero_()
    assert model.b.weight.abs().sum() == 0 and src.a.weight.abs().sum() > 0


def test_share_keeps_tied_parameters_tied():
    model = Tied()
    layout = layout_of(model)
    before = model.a.weight.detach().clone()
    flat = flatten(model, layout, "cpu")
    share_(model, layout, flat)
    assert model.a.weight is model.b.weight and torch.equal(model.a.weight, before)
    assert all(
        p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        for p in model.parameters()
    )
