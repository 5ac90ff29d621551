"""The `fastfood-v1` projection P: R^d -> R^D (docs/PROJECTION.md is the spec).

P(x) = crop_D( [H G_k Π H B pad_n(x)]_{k=0..K-1} ) / sqrt(n·D): K stacked Fastfood blocks of
size n = max(2^ceil(log2 d), 1024) that share B and Π (n-sized) and each draw their own Gaussian
diagonal G_k, so the first transform is computed once, every coordinate of x reaches every block
(no cropping of x), and E||P e_j||² = 1. Nothing here keeps an explicit matrix.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from app.engine import spec
from app.engine.fwht import fwht

MIN_BLOCK = 1024
MAX_DIM = 1 << 26
CHUNK_FLOATS = 1 << 18  # per run of blocks on CPU: 1 MB of float32, cache-sized


def block_size(d: int) -> int:
    """Fastfood block size n for a d-dimensional subspace: a power of two >= d, at least 1024."""
    return max(MIN_BLOCK, 1 << max(0, (d - 1).bit_length()))


class Projection(Protocol):
    """What the subspace model needs from a projection backend (a faster one can replace ours)."""

    d: int
    D: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...  # (d,) -> (D,)

    def transpose(self, y: torch.Tensor) -> torch.Tensor: ...  # (D,) -> (d,)


def first_transform(x: torch.Tensor, b: torch.Tensor, perm: torch.Tensor, scale: float):
    """x: (d,) -> Π H B pad_n(x) · scale: (n,), n = len(perm). O(n log n), shared by all K
    blocks (and by every backend: only the blocks differ between them)."""
    v = torch.zeros(perm.numel(), dtype=x.dtype, device=x.device)
    v[: x.numel()] = x * b
    return fwht(v)[perm] * scale


def first_transform_adjoint(
    w: torch.Tensor, b: torch.Tensor, perm: torch.Tensor, scale: float
) -> torch.Tensor:
    """w: (n,) -> the adjoint of `first_transform` applied to w: (d,), d = len(b)."""
    h = torch.empty_like(w)
    h[perm] = w  # adjoint of the gather u = h[perm]
    return fwht(h)[: b.numel()] * b * scale


class FastfoodProjection:
    """fastfood-v1 on CPU or CUDA, in float32 (training, serving) or float64 (gradcheck).

    Random state kept per instance: B (d floats), Π (n int64) and G (K·n floats, i.e. one float
    per output coordinate, rounded up to a whole block). G is the only D-sized state; it is a
    cache of a pure function of (seed, n, K), regenerated on demand (see `nbytes`).
    """

    def __init__(
        self,
        d: int,
        D: int,
        seed: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        g: torch.Tensor | None = None,
    ) -> None:
        """`g`: this (seed, n, K)'s G, (K, n) on `device` in `dtype`, to share one copy between
        instances (get_projection does); generated here when not given."""
        if not 1 <= d <= MAX_DIM:
            raise ValueError(f"subspace dimension d must be in [1, {MAX_DIM}], got {d}")
        if D < 1:
            raise ValueError(f"output dimension D must be >= 1, got {D}")
        self.d, self.D, self.seed = d, D, seed
        self.n = block_size(d)
        self.blocks = -(-D // self.n)
        self.device, self.dtype = torch.device(device), dtype
        self.scale = 1.0 / math.sqrt(self.n * D)
        self.b = spec.signs(seed, spec.STREAM_B, d).to(self.device, dtype)  # (d,)
        self.perm = spec.permutation(seed, spec.STREAM_PI, self.n).to(self.device)  # (n,)
        if g is None:
            g = generate_g(seed, self.n, self.blocks, self.device, dtype)
        elif tuple(g.shape) != (self.blocks, self.n) or g.dtype != dtype:
            raise ValueError(f"g must be ({self.blocks}, {self.n}) {dtype}, got {tuple(g.shape)}")
        self.g = g  # (K, n)

    @property
    def nbytes(self) -> int:
        """Bytes of random state held by this instance."""
        return sum(t.numel() * t.element_size() for t in (self.b, self.perm, self.g))

    def _chunks(self) -> range:
        """Starts of runs of blocks processed together: a run's temporaries stay in cache (and
        in the allocator's reuse range), so D-sized data is touched once, not once per step of
        the transform. On GPU one run covers everything (bandwidth is not the issue there)."""
        rows = self.blocks if self.device.type != "cpu" else max(1, CHUNK_FLOATS // self.n)
        return range(0, self.blocks, rows)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x: (d,) -> P x: (D,), into `out` if given. Linear in x."""
        u = first_transform(x, self.b, self.perm, self.scale)  # (n,)
        out = torch.empty(self.D, dtype=x.dtype, device=x.device) if out is None else out
        starts = self._chunks()
        for k0 in starts:
            k1 = min(k0 + starts.step, self.blocks)
            y = fwht(self.g[k0:k1] * u).view(-1)  # blocks k0..k1-1: H G_k u
            lo = k0 * self.n
            hi = min(k1 * self.n, self.D)
            out[lo:hi] = y[: hi - lo]
        return out

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """y: (D,) -> Pᵀ y: (d,). The exact adjoint of `forward` (the gradient of ⟨y, P x⟩ in x)."""
        w = y.new_zeros(self.n)
        starts = self._chunks()
        for k0 in starts:
            k1 = min(k0 + starts.step, self.blocks)
            lo, hi = k0 * self.n, k1 * self.n
            if hi <= self.D:
                part = y[lo:hi].view(k1 - k0, self.n)
            else:  # the last block reaches past D: zero-pad it
                part = y.new_zeros((k1 - k0) * self.n)
                part[: self.D - lo] = y[lo:]
                part = part.view(k1 - k0, self.n)
            w += (fwht(part) * self.g[k0:k1]).sum(0)  # (n,)
        return first_transform_adjoint(w, self.b, self.perm, self.scale)


class _ProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, projection: Projection) -> torch.Tensor:  # noqa: D102
        ctx.projection = projection
        with torch.autocast(x.device.type, enabled=False):  # keep P in full precision under AMP
            return projection.forward(x.float() if x.dtype == torch.bfloat16 else x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        with torch.autocast(grad.device.type, enabled=False):
            return ctx.projection.transpose(
                grad.float() if grad.dtype == torch.bfloat16 else grad
            ), None


def project(x: torch.Tensor, projection: Projection) -> torch.Tensor:
    """Differentiable P x: the backward is the adjoint Pᵀ, exact (gradcheck-tested)."""
    return _ProjectFunction.apply(x, projection)


def generate_g(
    seed: int, n: int, blocks: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """G for (seed, n, K): the (K, n) Gaussian diagonals, a pure function of those (not of d)."""
    g = spec.gaussians(seed, spec.STREAM_G, blocks * n)
    return g.to(device, dtype).view(blocks, n)
