"""Fast Walsh-Hadamard transform along the last axis: dense reference, fast path, autograd.

The fast path uses H_n = H_a ⊗ H_b ⊗ ...: a length-n transform is a few small dense GEMMs over
a reshaped array (factors of at most 64), which on CPU runs in a handful of passes over memory
instead of log2(n) butterfly passes. Unnormalised throughout: callers fold the scale in once.
"""

from __future__ import annotations

from functools import lru_cache

import torch

_MAX_FACTOR_BITS = 6


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@lru_cache(maxsize=32)
def _sylvester(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(dtype=dtype, device=device)


def hadamard_matrix(
    n: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> torch.Tensor:
    """(n, n) Sylvester Hadamard matrix: entries ±1, H @ H = n·I, symmetric."""
    if not is_power_of_two(n):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    return _sylvester(n, dtype, str(device))


def fwht_reference(x: torch.Tensor) -> torch.Tensor:
    """x: (..., n) -> x @ H_n with the dense matrix. The oracle the fast path is tested against."""
    return x @ hadamard_matrix(x.shape[-1], x.dtype, x.device)


def _factor_sizes(n: int) -> list[int]:
    bits = n.bit_length() - 1
    parts = max(1, -(-bits // _MAX_FACTOR_BITS))
    sizes = [bits // parts + (1 if i < bits % parts else 0) for i in range(parts)]
    return [1 << s for s in sizes]


def fwht(x: torch.Tensor) -> torch.Tensor:
    """x: (..., n), n a power of two -> H_n x along the last axis (unnormalised), new tensor.

    Equals `fwht_reference(x)` up to float rounding. Not differentiable by itself; use
    `FWHTFunction.apply` where autograd must flow through.
    """
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ValueError(f"FWHT length must be a power of two, got {n}")
    if n == 1:
        return x.clone()
    factors = _factor_sizes(n)
    y = x.reshape(-1, n)
    rows = y.shape[0]
    post = n
    for i, a in enumerate(factors):
        post //= a
        h = hadamard_matrix(a, x.dtype, x.device)
        if i == len(factors) - 1:
            y = (y.reshape(-1, a) @ h).reshape(rows, n)  # last axis: one flat GEMM
        else:
            pre = rows * (n // (post * a))
            y = torch.matmul(h, y.reshape(pre, a, post)).reshape(rows, n)  # (pre, a, post)
    return y.reshape(x.shape)


class FWHTFunction(torch.autograd.Function):
    """Autograd wrapper. H is symmetric, so the backward is the same unnormalised transform:
    d(Hx)/dx applied to g is Hᵀg = Hg. (Public ports that rescale here get wrong gradients.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return fwht(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return fwht(grad)
