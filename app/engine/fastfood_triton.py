"""fastfood-v1 as Triton kernels: G regenerated in registers, the Walsh-Hadamard transform of a
block done as two small dense products in registers and shared memory (H_m = H_R ⊗ H_C, so a
block viewed as an R×C tile T maps to H_R·T·H_C). Nothing D-sized is stored but the output.

Bit-for-bit the same random numbers as `spec.gaussians` (same counter hash, same table), so the
result equals `FastfoodProjection` up to float rounding. Blocks longer than `max_tile` (4096, a
64×64 tile: three such tiles fit a program's registers and shared memory) are split into
J = n / max_tile sub-blocks: the kernel transforms each sub-block and one small batched product
applies H_J across them (H_n = H_J ⊗ H_m), a couple of extra global passes.

Runs on CUDA; with TRITON_INTERPRET=1 set before import it also runs on CPU tensors (slowly),
which is how the tests check the kernels on machines without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from app.engine import spec
from app.engine.fastfood import MAX_DIM, block_size, first_transform, first_transform_adjoint
from app.engine.fwht import hadamard_matrix

GROUP = 16  # blocks reduced by one program in the transpose


@triton.jit
def _mix32(x):
    """spec.mix32 (lowbias32) on uint32."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x21F0AAAD, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x735A2D97, tl.uint32)
    return x ^ (x >> 15)


@triton.jit
def _gaussians(counter, k1, k2, table_ptr):
    """spec.gaussians for uint32 counters: table[top 16 bits of mix32(mix32(c ^ k1) ^ k2)]."""
    bits = _mix32(_mix32(counter ^ k1) ^ k2)
    return tl.load(table_ptr + (bits >> 16).to(tl.int32))


@triton.jit
def _block_transform(t, hr_ptr, hc_ptr, R: tl.constexpr, C: tl.constexpr):
    """H_R · t · H_C for an (R, C) tile: the unnormalised WHT of the flattened tile."""
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    h_r = tl.load(hr_ptr + r[:, None] * R + r[None, :])
    h_c = tl.load(hc_ptr + c[:, None] * C + c[None, :])
    y = tl.dot(h_r, t, input_precision="ieee")
    return tl.dot(y, h_c, input_precision="ieee")


@triton.jit
def _forward_kernel(
    u_ptr, table_ptr, hr_ptr, hc_ptr, out_ptr, limit, n, k1_bits, k2_bits,
    R: tl.constexpr, C: tl.constexpr,
):  # fmt: skip
    """Program (k, s): sub-block s of block k, out[k·n + s·R·C + i] = (H_m (g ⊙ u))[i]."""
    k = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    local = s * R * C + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]  # (R, C) in [0, n)
    where = k * n + local  # int64: D can exceed 2**31
    k1 = k1_bits.to(tl.uint32, bitcast=True)
    k2 = k2_bits.to(tl.uint32, bitcast=True)
    g = _gaussians(where.to(tl.uint32), k1, k2, table_ptr)
    y = _block_transform(g * tl.load(u_ptr + local), hr_ptr, hc_ptr, R, C)
    tl.store(out_ptr + where, y, mask=where < limit)


@triton.jit
def _transpose_kernel(
    y_ptr, table_ptr, hr_ptr, hc_ptr, partial_ptr, limit, n, blocks, k1_bits, k2_bits,
    R: tl.constexpr, C: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """Program (j, s): Σ over blocks k of group j of g_k ⊙ (H_m y_k) on sub-block s."""
    j = tl.program_id(0)
    s = tl.program_id(1)
    local = s * R * C + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    k1 = k1_bits.to(tl.uint32, bitcast=True)
    k2 = k2_bits.to(tl.uint32, bitcast=True)
    acc = tl.zeros((R, C), dtype=tl.float32)
    for i in range(GROUP):
        k = (j * GROUP + i).to(tl.int64)
        where = k * n + local
        y = tl.load(y_ptr + where, mask=where < limit, other=0.0)  # limit <= blocks·n
        g = _gaussians(where.to(tl.uint32), k1, k2, table_ptr)
        # every output of the transform counts, also past D (the reference pads y with zeros)
        acc += tl.where(k < blocks, g * _block_transform(y, hr_ptr, hc_ptr, R, C), 0.0)
    tl.store(partial_ptr + j.to(tl.int64) * n + local, acc)


def _as_int32(word: int) -> int:
    """A uint32 key as the int32 with the same bits (Triton passes Python ints as int32/int64)."""
    return word - (1 << 32) if word >= 1 << 31 else word


class TritonFastfoodProjection:
    """The `Projection` interface, float32, with G generated on the fly in the kernels.

    Random state kept: B (d floats), Π (n int64), the 65536-entry Gaussian table and two small
    Hadamard factors: independent of D (see `nbytes`).
    """

    def __init__(
        self,
        d: int,
        D: int,
        seed: int,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.float32,
        max_tile: int = 4096,
    ) -> None:
        if dtype != torch.float32:
            raise ValueError("the Triton projection computes in float32")
        if not 1 <= d <= MAX_DIM:
            raise ValueError(f"subspace dimension d must be in [1, {MAX_DIM}], got {d}")
        if not 1 <= D < 2**32:
            raise ValueError(f"output dimension D must be in [1, 2**32), got {D}")
        self.d, self.D, self.seed = d, D, seed
        self.device, self.dtype = torch.device(device), dtype
        self.n = block_size(d)
        self.blocks = -(-D // self.n)
        self.scale = 1.0 / math.sqrt(self.n * D)
        self.m = min(self.n, max_tile)  # sub-block transformed in registers
        self.J = self.n // self.m  # sub-blocks per block, combined by H_J afterwards
        bits = int(math.log2(self.m))
        self.R, self.C = 1 << (bits // 2), 1 << (bits - bits // 2)
        if self.R < 16:
            raise ValueError(f"max_tile must be at least 256, got {max_tile}")
        self.b = spec.signs(seed, spec.STREAM_B, d).to(self.device)  # (d,)
        self.perm = spec.permutation(seed, spec.STREAM_PI, self.n).to(self.device)  # (n,)
        self.table = spec.gaussian_table().to(self.device)
        self.h_r = hadamard_matrix(self.R, torch.float32, str(self.device)).contiguous()
        self.h_c = hadamard_matrix(self.C, torch.float32, str(self.device)).contiguous()
        self.h_j = hadamard_matrix(self.J, torch.float32, str(self.device))
        k1, k2 = spec.stream_keys(seed, spec.STREAM_G)
        self.k1, self.k2 = _as_int32(int(k1)), _as_int32(int(k2))

    @property
    def nbytes(self) -> int:
        """Bytes of random state held by this instance: independent of D."""
        kept = (self.b, self.perm, self.table, self.h_r, self.h_c, self.h_j)
        return sum(t.numel() * t.element_size() for t in kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (d,) -> P x: (D,)."""
        u = first_transform(x.float(), self.b, self.perm, self.scale).contiguous()
        if self.J == 1:
            out = torch.empty(self.D, dtype=torch.float32, device=x.device)
            limit = self.D
        else:  # whole blocks, then H_J across the sub-blocks of each block
            out = torch.empty(self.blocks * self.n, dtype=torch.float32, device=x.device)
            limit = out.numel()
        _forward_kernel[(self.blocks, self.J)](
            u, self.table, self.h_r, self.h_c, out, limit, self.n, self.k1, self.k2,
            R=self.R, C=self.C,
        )  # fmt: skip
        if self.J == 1:
            return out
        mixed = torch.matmul(self.h_j, out.view(self.blocks, self.J, self.m))
        return mixed.view(-1)[: self.D]

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """y: (D,) -> Pᵀ y: (d,), the exact adjoint of `forward`."""
        y = y.float().contiguous()
        limit = self.D
        if self.J > 1:  # H_J across sub-blocks first (H_n = H_J ⊗ H_m is symmetric)
            padded = y.new_zeros(self.blocks * self.n)
            padded[: self.D] = y
            y = torch.matmul(self.h_j, padded.view(self.blocks, self.J, self.m)).view(-1)
            limit = y.numel()
        groups = -(-self.blocks // GROUP)
        partial = torch.empty(groups, self.n, dtype=torch.float32, device=y.device)
        _transpose_kernel[(groups, self.J)](
            y, self.table, self.h_r, self.h_c, partial, limit, self.n, self.blocks,
            self.k1, self.k2, R=self.R, C=self.C, GROUP=GROUP,
        )  # fmt: skip
        w = partial.sum(0)  # (n,)
        return first_transform_adjoint(w, self.b, self.perm, self.scale)
