"""The versioned random generator behind `fastfood-v1`: (seed, stream, counter) -> bits.

Everything random in a task (Fastfood's B, Π, G and the seeded classifier-head init) comes from
here, computed by this module's own integer hash, never from torch's or numpy's RNG streams,
whose outputs are not promised stable across versions or devices (DESIGN.md §4.5). Changing any
constant here changes every stored task: bump SPEC_VERSION and keep the golden tests honest.
"""

from __future__ import annotations

import statistics
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

SPEC_VERSION = "fastfood-v1"
MAX_SEED = 2**32 - 1

# Stream ids: one independent stream per random object.
STREAM_B = 0xB
STREAM_PI = 0x91
STREAM_G = 0x6
_M1 = np.uint32(0x21F0AAAD)
_M2 = np.uint32(0x735A2D97)
_GOLDEN = 0x9E3779B9
_CHUNK = 1 << 22


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 (C. Wellons): a uint32 bijection with near-ideal avalanche; (n,) uint32 -> (n,)."""
    x = x ^ (x >> np.uint32(16))
    x = x * _M1
    x = x ^ (x >> np.uint32(15))
    x = x * _M2
    return x ^ (x >> np.uint32(15))


def _scalar_mix(v: int) -> int:
    return int(mix32(np.array([v & 0xFFFFFFFF], dtype=np.uint32))[0])


def stream_keys(seed: int, stream: int) -> tuple[np.uint32, np.uint32]:
    """Two 32-bit keys for (seed, stream); different seeds give unrelated streams."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    k1 = _scalar_mix(seed ^ _scalar_mix(stream + _GOLDEN))
    k2 = _scalar_mix(k1 + _GOLDEN)
    return np.uint32(k1), np.uint32(k2)


def random_bits(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """uint32 words for counters start..start+count-1: mix32(mix32(c ^ k1) ^ k2).

    Counter-based, so any slice can be computed alone, in any order, on any device.
    """
    if start < 0 or start + count > 2**32:
        raise ValueError("counter range exceeds 2**32")
    k1, k2 = stream_keys(seed, stream)
    c = np.arange(start, start + count, dtype=np.uint32)
    return mix32(mix32(c ^ k1) ^ k2)


@lru_cache(maxsize=1)
def gaussian_table() -> torch.Tensor:
    """(65536,) float32 quantiles of N(0, 1) at (i + 0.5) / 65536, rescaled to unit second moment.

    Python's statistics.NormalDist is pure IEEE-754 double arithmetic, so the table is the same
    on every platform; the rescale makes E[g²] = 1 exactly, which the projection's norm relies on.
    """
    nd = statistics.NormalDist()
    q = np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float64)
    q /= np.sqrt(np.mean(q * q))
    return torch.from_numpy(q.astype(np.float32))


def gaussians(seed: int, stream: int, count: int, start: int = 0) -> torch.Tensor:
    """(count,) float32 standard normals: table[top 16 bits of random_bits]. Threaded in chunks."""
    table = gaussian_table()
    out = torch.empty(count, dtype=torch.float32)

    def fill(lo: int) -> None:
        hi = min(lo + _CHUNK, count)
        idx = torch.from_numpy(
            (random_bits(seed, stream, start + lo, hi - lo) >> 16).astype(np.int32)
        )
        torch.index_select(table, 0, idx, out=out[lo:hi])

    starts = range(0, count, _CHUNK)
    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
            list(pool.map(fill, starts))
    elif count:
        fill(0)
    return out


def signs(seed: int, stream: int, count: int) -> torch.Tensor:
    """(count,) float32 in {-1, +1}: the top bit of random_bits picks the sign."""
    bits = random_bits(seed, stream, 0, count) >> 31
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32))


def permutation(seed: int, stream: int, n: int) -> torch.Tensor:
    """(n,) int64 uniform permutation: a stable argsort of n random words (ties by index)."""
    keys = random_bits(seed, stream, 0, n)
    return torch.from_numpy(np.argsort(keys, kind="stable").astype(np.int64))


def name_stream(name: str) -> int:
    """A stream id per parameter name, for seeded initial values (the classifier head)."""
    return zlib.crc32(f"init:{name}".encode())
