"""LowRankModel: trains a transformers classifier through θ (and λ) only, as rank-r deltas on
its target layers (and, lowrank-v2, on its head's hidden dense layer) plus a dense delta on the
rest of its seeded head. Nothing of the base is copied: the targets get forward hooks that add
(x·Aᵀ)·Bᵀ, and the head is overridden functionally."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from app.engine.errors import SubspaceConfigError
from app.engine.lowrank.config import LowRankConfig
from app.engine.lowrank.layout import (
    dim_range,
    layout_for,
    projected_dim,
    projections_for,
    seeded_a,
    task_factors,
)
from app.engine.step_size import theta_scale


class LowRankModel(nn.Module):
    """θ_d = [θ_{d-m}, λ] -> W_t + λ_t·B_t(θ)·A_t on each target, head_0 + λ_h·δ_h(θ) on the head.

    θ starts at 0 and λ at 1, so the model starts exactly at the base (and the seeded head) and
    θ gets a gradient through every B_t and the head. In lowrank-v2 θ's adapter share and head
    share have projections of their own, so the head's gradient (tens of times the adapters' at
    θ = 0) no longer drowns the adapters' in one shared Pᵀ.
    """

    def __init__(
        self,
        model: nn.Module,
        seeded: frozenset[str],
        config: LowRankConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        device = torch.device(device)
        self.config = config
        self.model = model.to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.D = sum(p.numel() for p in self.model.parameters())
        self.layout = layout_for(self.model, seeded, config)
        low, high = dim_range(self.layout)
        if not low <= config.dim <= high:
            raise SubspaceConfigError(
                f"dim must be in [{low}, {high}] for lowrank rank {config.rank} on this model "
                f"({self.layout.num_scales} of d are scales), got {config.dim}"
            )
        self.d_proj = projected_dim(self.layout, config.dim)
        self.theta = nn.Parameter(torch.zeros(self.d_proj, device=device, dtype=dtype))
        m = self.layout.num_scales
        self.lam = nn.Parameter(torch.ones(m, device=device, dtype=dtype)) if m else None
        self.a = [
            seeded_a(config.seed, t, config.rank).to(device, dtype) for t in self.layout.all_targets
        ]
        self.projections = projections_for(self.layout, config.dim, config.seed, device, dtype)
        self._bs: list[torch.Tensor] | None = None  # this forward's λ_t·B_t, read by the hooks
        params = dict(self.model.named_parameters())
        self._head = [(name, params[name]) for name, _ in self.layout.head]  # frozen head_0
        modules = dict(self.model.named_modules())
        self._hooks = [
            modules[t.name].register_forward_hook(self._hook(i))
            for i, t in enumerate(self.layout.all_targets)
        ]

    def _hook(self, i: int):
        def add_low_rank(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if self._bs is None:
                return output
            correction = F.linear(F.linear(args[0], self.a[i]), self._bs[i])
            if output.dtype in (torch.bfloat16, torch.float16):  # autocast: sum in fp32 (as
                return output.float() + correction.float()  # SAID's split forward), not rounded
            return output + correction

        return add_low_rank

    def forward(self, **batch: torch.Tensor):
        bs, heads = task_factors(self.layout, self.theta, self.lam, self.projections)
        overrides = {name: p + delta for (name, p), delta in zip(self._head, heads, strict=True)}
        self._bs = bs
        try:
            return functional_call(self.model, overrides, args=(), kwargs=batch, strict=False)
        finally:
            self._bs = None

    def lr_scales(self) -> dict[str, float]:
        """θ's Adam rate scaled by √(1000/d') (app/engine/step_size.py); λ's is the plain one."""
        return {"theta": theta_scale(self.d_proj)}

    def artifact_fields(self) -> dict:
        """rank and the resolved target suffixes, so the file names exactly what it adapts."""
        suffixes = sorted({t.name.rsplit(".", 1)[-1] for t in self.layout.targets})
        return {"rank": self.config.rank, "targets": ",".join(suffixes)}

    def load_vector(self, theta: torch.Tensor, lam: torch.Tensor | None) -> None:
        if tuple(theta.shape) != (self.d_proj,):
            raise SubspaceConfigError(
                f"θ has shape {tuple(theta.shape)}, expected ({self.d_proj},)"
            )
        if (lam is None) != (self.lam is None) or (lam is not None and lam.shape != self.lam.shape):
            raise SubspaceConfigError(
                f"λ must have shape ({self.layout.num_scales},)"
                if self.lam is not None
                else "this lowrank task has no scales (λ)"
            )
        with torch.no_grad():
            self.theta.copy_(theta)
            if self.lam is not None:
                self.lam.copy_(lam)

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """Merge the deltas into the wrapped model (W_t += λ_t·B_t·A_t, head += λ·δ) and return
        it for plain inference; θ is reset so the hooks add nothing afterwards."""
        bs, heads = task_factors(self.layout, self.theta, self.lam, self.projections)
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        for t, a, b in zip(self.layout.all_targets, self.a, bs, strict=True):
            modules[t.name].weight.add_(b @ a)
        for (name, _), delta in zip(self.layout.head, heads, strict=True):
            params[name].add_(delta)
        self.theta.zero_()
        if self.lam is not None:
            self.lam.fill_(1.0)
        return self.model
