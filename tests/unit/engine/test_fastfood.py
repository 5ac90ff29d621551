import math

import pytest
import torch

from app.engine.fastfood import FastfoodProjection, block_size, project
from app.engine.projections import get_projection


def dense(p: FastfoodProjection) -> torch.Tensor:
    """The explicit D×d matrix, one column per basis vector (small sizes only)."""
    eye = torch.eye(p.d, dtype=p.dtype)
    return torch.stack([p.forward(e) for e in eye], 1)


@pytest.mark.parametrize("d,D", [(1, 10), (5, 3000), (37, 1024), (1024, 5000), (1500, 4099)])
def test_gradient_is_exact(d, D):
    p = FastfoodProjection(d, D, seed=3, dtype=torch.float64)
    x = torch.randn(d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: project(t, p), (x,), fast_mode=d > 64)


def test_transpose_is_the_adjoint_of_the_dense_matrix():
    p = FastfoodProjection(37, 3000, seed=5, dtype=torch.float64)
    y = torch.randn(3000, dtype=torch.float64)
    torch.testing.assert_close(p.transpose(y), dense(p).T @ y)


def test_linear():
    p = FastfoodProjection(100, 7000, seed=1, dtype=torch.float64)
    x, y = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    torch.testing.assert_close(
        p.forward(2.5 * x - 0.5 * y), 2.5 * p.forward(x) - 0.5 * p.forward(y)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columns_have_unit_norm_as_specified(seed):
    # Spec: E||P e_j||² = 1, with relative spread of order sqrt(2/D) (docs/PROJECTION.md).
    D, d = 2**15 + 123, 64
    norms2 = (dense(FastfoodProjection(d, D, seed, dtype=torch.float64)) ** 2).sum(0)
    sigma = math.sqrt(2 / D)
    assert abs(norms2.mean().item() - 1) < 4 * sigma
    assert (norms2.max() - norms2.min()).item() < 2 * sigma
    gram = dense(FastfoodProjection(d, D, seed, dtype=torch.float64))
    gram = gram.T @ gram
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max().item() < 8 * sigma  # columns nearly orthogonal


@pytest.mark.parametrize("d,D", [(1, 50), (1000, 20_000), (1025, 20_000), (4_000_000, 4_500_000)])
def test_every_coordinate_reaches_the_output(d, D):
    # A dropped (cropped) coordinate of θ_d would get exactly zero gradient.
    p = FastfoodProjection(d, D, seed=11)
    grad = p.transpose(torch.randn(D))
    assert grad.shape == (d,)
    assert (grad != 0).all()
    assert block_size(d) >= d


def test_deterministic_from_seed_and_layout():
    x = torch.randn(300)
    a = FastfoodProjection(300, 9000, seed=7).forward(x)
    b = FastfoodProjection(300, 9000, seed=7).forward(x)
    c = FastfoodProjection(300, 9000, seed=8).forward(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_random_state_is_one_float_per_output_plus_n_sized_parts():
    p = FastfoodProjection(1000, 1_000_000, seed=0)
    n = block_size(1000)
    assert p.nbytes == p.blocks * n * 4 + n * 8 + 1000 * 4
    assert p.nbytes < 4.01 * 1_000_000 + 16 * n


def test_cache_returns_the_same_instance():
    assert get_projection(10, 5000, 1) is get_projection(10, 5000, 1)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="d must be"):
        FastfoodProjection(0, 10, 0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = torch.randn(900)
    cpu = FastfoodProjection(900, 300_000, seed=4)
    gpu = FastfoodProjection(900, 300_000, seed=4, device="cuda")
    torch.testing.assert_close(gpu.forward(x.cuda()).cpu(), cpu.forward(x), rtol=1e-4, atol=1e-6)
    y = torch.randn(300_000)
    torch.testing.assert_close(
        gpu.transpose(y.cuda()).cpu(), cpu.transpose(y), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("run_floats", [1024, 2048, 4096])
def test_blocked_runs_equal_one_pass(monkeypatch, run_floats):
    """Runs of 1, 2 and 4 blocks (the last one partial and reaching past D) give the same
    forward and transpose as all blocks at once."""
    import app.engine.fastfood as ff

    d, D = 200, 5 * 1024 + 300  # 6 blocks of 1024, the last one cropped
    x, y = torch.randn(d, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    whole = FastfoodProjection(d, D, seed=9, dtype=torch.float64)
    want_f, want_t = whole.forward(x), whole.transpose(y)
    monkeypatch.setattr(ff, "CHUNK_FLOATS", run_floats)
    blocked = FastfoodProjection(d, D, seed=9, dtype=torch.float64)
    assert len(blocked._chunks()) == -(-6 // (run_floats // 1024)) > 1
    torch.testing.assert_close(blocked.forward(x), want_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blocked.transpose(y), want_t, rtol=1e-12, atol=1e-12)
    out = torch.full((D,), float("nan"), dtype=torch.float64)
    assert blocked.forward(x, out=out) is out and not out.isnan().any()
