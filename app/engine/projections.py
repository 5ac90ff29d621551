"""Which projection backend serves (d, D, seed, device, dtype), from one process-wide cache.

The reference fastfood-v1 (app/engine/fastfood.py) on CPU, the Triton kernels
(app/engine/fastfood_triton.py) on CUDA in float32: both compute the same P, and only this
factory knows both, so neither imports the other.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from concurrent.futures import Future
from threading import Lock

import torch

from app.engine.fastfood import MAX_DIM, FastfoodProjection, Projection, block_size, generate_g

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
        from app.engine.fastfood_triton import TritonFastfoodProjection  # imports triton

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
        lambda: generate_g(seed, n, blocks, device, dtype),
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
