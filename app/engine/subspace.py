"""Subspace fine-tuning of a whole transformers model through one small vector.

DID (paper eq. 2):  θ = θ_0 + P(θ_d)
SAID (paper eq. 3): θ_i = θ_0,i + λ_i · P(θ_{d-m})_i, one λ per parameter tensor (m of them),
and the reported d counts the λs: d = (d - m) projected coordinates + m scales.
θ_d starts at 0 and λ at 1, so the model starts exactly at θ_0 and both get gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from app.engine.base import canonical_names
from app.engine.errors import SubspaceConfigError
from app.engine.fastfood import Projection, get_projection, project
from app.engine.spec import MAX_SEED, SPEC_VERSION

Method = Literal["said", "did"]


@dataclass(frozen=True)
class SubspaceConfig:
    """How a task is parameterised.

    method: "said" (one extra scale per tensor; the paper finds it needs a smaller d) or "did".
    dim: the reported d. 200-1000 suits MiniLM/BERT-size models on GLUE-like tasks (DESIGN.md §3).
    seed: fixes P and the seeded head init; tasks sharing a seed and d share one cached P.
    """

    method: Method = "said"
    dim: int = 1000
    seed: int = 0
    spec: str = SPEC_VERSION


def projected_dim(config: SubspaceConfig, num_tensors: int) -> int:
    """Length of θ_{d-m} for SAID (d minus one λ per tensor), or d for DID."""
    return config.dim - num_tensors if config.method == "said" else config.dim


def validate(config: SubspaceConfig, num_tensors: int, D: int) -> None:
    if config.method not in ("said", "did"):
        raise SubspaceConfigError(f"method must be 'said' or 'did', got '{config.method}'")
    if config.spec != SPEC_VERSION:
        raise SubspaceConfigError(f"projection spec '{config.spec}' is unknown; use {SPEC_VERSION}")
    if not 0 <= config.seed <= MAX_SEED:
        raise SubspaceConfigError(f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    low = num_tensors + 1 if config.method == "said" else 1
    if not low <= config.dim <= D:
        hint = f" (SAID spends {num_tensors} of d on per-tensor scales)" if low > 1 else ""
        raise SubspaceConfigError(
            f"dim must be in [{low}, {D}] for this model{hint}, got {config.dim}"
        )


def subspace_weights(
    theta0: torch.Tensor,
    theta: torch.Tensor,
    lam: torch.Tensor | None,
    segment: torch.Tensor,
    projection: Projection,
) -> torch.Tensor:
    """DID: θ_0 + P(θ); SAID: θ_0 + λ_i·P(θ)_i per tensor i. Shapes: theta0 (D,), theta (d-m,),
    lam (m,), segment (m,) int64 tensor sizes summing to D. Returns (D,)."""
    delta = project(theta, projection)  # (D,)
    if lam is None:
        return theta0 + delta
    return _ScaledSegments.apply(theta0, lam, delta, segment.tolist())


class _ScaledSegments(torch.autograd.Function):
    """θ_0 + λ_i·δ_i per segment i, one pass over D with no D-sized λ expansion (which costs
    more than the projection on CPU). Backward: ∂/∂δ_i = λ_i·g_i, ∂/∂λ_i = ⟨g_i, δ_i⟩."""

    @staticmethod
    def forward(ctx, theta0, lam, delta, sizes):  # noqa: D102
        out = torch.empty_like(delta)
        scales = lam.tolist()
        for o, t0, dl, s in zip(
            out.split(sizes), theta0.split(sizes), delta.split(sizes), scales, strict=True
        ):
            torch.add(t0, dl, alpha=s, out=o)
        ctx.save_for_backward(lam, delta)
        ctx.sizes = sizes
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        lam, delta = ctx.saved_tensors
        grad_delta = torch.empty_like(grad)
        scales = lam.tolist()
        splits = (t.split(ctx.sizes) for t in (grad, delta, grad_delta))
        pairs = zip(*splits, strict=True)
        grad_lam = []
        for (g, dl, gd), s in zip(pairs, scales, strict=True):
            torch.mul(g, s, out=gd)
            grad_lam.append(torch.dot(g, dl))
        return None, torch.stack(grad_lam).to(lam.dtype), grad_delta, None


class SubspaceModel(nn.Module):
    """Wraps a transformers model so that its only trainable state is θ_d (and λ for SAID).

    The base weights are moved into one flat float32 buffer θ_0 (canonical order) and the
    model's own parameters become views of it, so the base is held once. Every forward rebuilds
    the weights as one fused D-sized expression and calls the model functionally.
    """

    def __init__(
        self,
        model: nn.Module,
        config: SubspaceConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.config = config
        self.names = canonical_names(model)
        params = dict(model.named_parameters())
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.D = sum(self.sizes)
        validate(config, len(self.names), self.D)
        device = torch.device(device)
        flat = [params[n].detach().reshape(-1).to(dtype) for n in self.names]
        theta0 = torch.cat(flat).to(device)
        self.register_buffer("theta0", theta0, persistent=False)  # (D,)
        for name, view in zip(self.names, self._split(self.theta0), strict=True):
            params[name].data = view  # the model's weights now alias θ_0: one copy in memory
            params[name].requires_grad_(False)
        self.model = model.to(device)
        self.d_proj = projected_dim(config, len(self.names))
        self.theta = nn.Parameter(torch.zeros(self.d_proj, device=device, dtype=dtype))  # θ_{d-m}
        self.lam = (
            nn.Parameter(torch.ones(len(self.names), device=device, dtype=dtype))
            if self.is_said
            else None
        )
        self.register_buffer(
            "segment", torch.tensor(self.sizes, device=device), persistent=False
        )  # (m,) sizes for expanding λ
        self.projection: Projection = get_projection(
            self.d_proj, self.D, config.seed, device, dtype
        )

    @property
    def is_said(self) -> bool:
        return self.config.method == "said"

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(s) for v, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]

    def flat_weights(self) -> torch.Tensor:
        """θ_0 + λ·P(θ_d) as one (D,) tensor, differentiable in θ_d and λ."""
        return subspace_weights(self.theta0, self.theta, self.lam, self.segment, self.projection)

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._split(self.flat_weights()), strict=True))

    def forward(self, **batch: torch.Tensor):
        return functional_call(self.model, self.weights(), args=(), kwargs=batch)

    def artifact_fields(self) -> dict:
        """Method-specific task-file fields: none for SAID and DID."""
        return {}

    def load_vector(self, theta: torch.Tensor, lam: torch.Tensor | None) -> None:
        """Set θ_d (and λ) from stored values, checking shapes."""
        if tuple(theta.shape) != (self.d_proj,):
            raise SubspaceConfigError(
                f"θ has shape {tuple(theta.shape)}, expected ({self.d_proj},)"
            )
        with torch.no_grad():
            self.theta.copy_(theta)
            if self.lam is not None:
                if lam is None or tuple(lam.shape) != (len(self.names),):
                    raise SubspaceConfigError(f"λ must have shape ({len(self.names)},)")
                self.lam.copy_(lam)

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """Write θ_0 + λ·P(θ_d) into the wrapped model's weights and return it, ready for
        plain inference (no projection per forward: DESIGN.md §4.7)."""
        self.theta0.copy_(self.flat_weights())
        self.theta.zero_()
        if self.lam is not None:
            self.lam.fill_(1.0)
        return self.model


def _register() -> None:
    """SAID and DID in the method registry (app/engine/methods.py)."""
    from app.engine.methods import Method, TaskSettings, register

    def build(model, seeded, settings: TaskSettings, device="cpu") -> SubspaceModel:
        return SubspaceModel(
            model, SubspaceConfig(settings.method, settings.dim, settings.seed), device
        )

    def dim_range(model, seeded, settings: TaskSettings) -> tuple[int, int]:
        m = len(canonical_names(model))
        D = sum(p.numel() for p in model.parameters())
        return (m + 1 if settings.method == "said" else 1), D

    register(Method("said", SPEC_VERSION, 0.2, "required", build, dim_range))
    register(Method("did", SPEC_VERSION, 0.2, "forbidden", build, dim_range))


_register()
