"""The `fastfood-v1` projection P: R^d -> R^D (docs/PROJECTION.md is the spec).

P(x) = crop_D( [H G_k Π H B pad_n(x)]_{k=0..K-1} ) / sqrt(n·D): K stacked Fastfood blocks of
size n = max(2^ceil(log2 d), 1024) that share B and Π (n-sized) and each draw their own Gaussian
diagonal G_k, so the first transform is computed once, every coordinate of x reaches every block
(no cropping of x), and E||P e_j||² = 1. Nothing here keeps an explicit matrix.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections import OrderedDict
from concurrent.futures import Future
from threading import Lock
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
            g = _generate_g(seed, self.n, self.blocks, self.device, dtype)
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


def _generate_g(
    seed: int, n: int, blocks: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """G for (seed, n, K): the (K, n) Gaussian diagonals, a pure function of those (not of d)."""
    g = spec.gaussians(seed, spec.STREAM_G, blocks * n)
    return g.to(device, dtype).view(blocks, n)


# Process-wide cache of projection state, shared by serving and training. Two kinds of entry:
# ("g", seed, n, K, device, dtype) -> G, the only D-sized state (4 bytes per output on CPU), shared
# by every d with the same block size (d = 999 and d = 1000 use one G); and
# ("p", d, D, seed, device, dtype) -> a projection instance (its own B and Π: d + n numbers, or
# the Triton kernels' state). Bounded in bytes by PROJECTION_CACHE_BYTES, a setting-free
# constant, least recently used first; the entries of the projection just asked for are never
# evicted, so a single G larger than the bound is still kept while it is the newest.
PROJECTION_CACHE_BYTES = 1 << 30
_CACHE: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # key -> (value, bytes)
_BUILDING: dict[tuple, Future] = {}  # key -> the build in progress (each key built once)
_CACHE_LOCK = Lock()


def _use_triton(device: torch.device, dtype: torch.dtype) -> bool:
    """Triton kernels on CUDA in float32 (KILOTASK_PROJECTION=reference turns them off)."""
    if device.type != "cuda" or dtype != torch.float32:
        return False
    if os.environ.get("KILOTASK_PROJECTION", "auto") == "reference":
        return False
    return importlib.util.find_spec("triton") is not None


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _cached(key: tuple, make, size_of, protect: frozenset) -> object:
    """The cached value for `key`, made once by `make()` even when threads ask at once."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key][0]
        pending = _BUILDING.get(key)
        if pending is None:
            pending = _BUILDING[key] = Future()
            mine = True
        else:
            mine = False
    if not mine:
        return pending.result()  # another thread is building it: share its result
    try:
        value = make()
    except BaseException as exc:
        with _CACHE_LOCK:
            del _BUILDING[key]
        pending.set_exception(exc)
        raise
    with _CACHE_LOCK:
        del _BUILDING[key]
        _CACHE[key] = (value, size_of(value))
        _evict(protect | {key})
    pending.set_result(value)
    return value


def _evict(protect: frozenset) -> None:
    """Drop least recently used entries (not `protect`) until the cache fits its bound. A
    dropped G takes the cached instances that use it along."""
    total = sum(nbytes for _, nbytes in _CACHE.values())
    for key in list(_CACHE):
        if total <= PROJECTION_CACHE_BYTES:
            return
        if key in protect or key not in _CACHE:
            continue
        total -= _CACHE.pop(key)[1]
        if key[0] == "g":
            users = [k for k, (v, _) in _CACHE.items() if getattr(v, "g_key", None) == key]
            for other in users:
                if other not in protect:
                    total -= _CACHE.pop(other)[1]


def projection_cache_info() -> dict:
    """What the projection cache holds now (reported by the serving runtime)."""
    with _CACHE_LOCK:
        tables = [nbytes for key, (_, nbytes) in _CACHE.items() if key[0] == "g"]
        return {
            "bytes": sum(nbytes for _, nbytes in _CACHE.values()),
            "limit_bytes": PROJECTION_CACHE_BYTES,
            "g_tables": len(tables),
            "g_bytes": sum(tables),
            "projections": len(_CACHE) - len(tables),
            "building": len(_BUILDING),
        }


def clear_projection_cache() -> None:
    """Forget every cached projection (tests; the memory goes once no caller holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def get_projection(
    d: int,
    D: int,
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Projection:
    """A shared projection for (d, D, seed, device, dtype), from the process-wide cache above.

    On CUDA: the Triton kernels, which regenerate G on the fly (state independent of D). On
    CPU: FastfoodProjection, whose G (one float per parameter) is cached once per (seed, block
    size, block count, device, dtype), because regenerating it costs more than the projection
    itself there. Tasks sharing a seed and block size (the common case in serving) share one G,
    whatever their d. Concurrent cold calls build each piece once.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = ("p", d, D, seed, str(device), dtype)
    if _use_triton(device, dtype):
        from app.engine.fastfood_triton import TritonFastfoodProjection

        return _cached(
            key,
            lambda: TritonFastfoodProjection(d, D, seed, device, dtype),
            lambda proj: proj.nbytes,
            frozenset(),
        )
    if not 1 <= d <= MAX_DIM:  # before building anything
        raise ValueError(f"subspace dimension d must be in [1, {MAX_DIM}], got {d}")
    if D < 1:
        raise ValueError(f"output dimension D must be >= 1, got {D}")
    n = block_size(d)
    blocks = -(-D // n)
    g_key = ("g", seed, n, blocks, str(device), dtype)
    g = _cached(
        g_key,
        lambda: _generate_g(seed, n, blocks, device, dtype),
        _tensor_bytes,
        frozenset(),
    )

    def make() -> FastfoodProjection:
        proj = FastfoodProjection(d, D, seed, device, dtype, g=g)
        proj.g_key = g_key  # eviction of this G drops the instance too
        return proj

    proj = _cached(key, make, lambda p: _tensor_bytes(p.b, p.perm), frozenset({g_key}))
    with _CACHE_LOCK:  # the instance is in use: its G is as recent as it is, and counted
        if g_key in _CACHE:
            _CACHE.move_to_end(g_key)
        elif key in _CACHE:  # G was dropped meanwhile, but this instance holds it
            _CACHE[g_key] = (proj.g, _tensor_bytes(proj.g))
            _evict(frozenset({g_key, key}))
    return proj
