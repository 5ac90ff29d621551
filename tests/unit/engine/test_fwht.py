import pytest
import torch

from app.engine.fwht import FWHTFunction, fwht, fwht_reference, hadamard_matrix


@pytest.mark.parametrize("n", [1, 2, 4, 32, 64, 128, 1024, 2048, 8192])
def test_fast_transform_equals_dense_matrix(n):
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), fwht_reference(x), rtol=1e-12, atol=1e-9)


def test_batched_leading_dims_and_float32():
    x = torch.randn(2, 3, 256)
    ref = fwht_reference(x.double()).float()
    torch.testing.assert_close(fwht(x), ref, rtol=1e-5, atol=1e-4)


def test_large_transform_is_its_own_inverse_up_to_n():
    n = 1 << 17  # three Kronecker factors
    x = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)) / n, x)


def test_hadamard_is_symmetric_and_orthogonal():
    h = hadamard_matrix(64, torch.float64)
    torch.testing.assert_close(h, h.T)
    torch.testing.assert_close(h @ h, 64 * torch.eye(64, dtype=torch.float64))


def test_gradient_is_exact():
    x = torch.randn(2, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FWHTFunction.apply, (x,))


def test_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.randn(3, 137))
