"""Subspace fine-tuning of a whole transformers model through one small vector.

DID (paper eq. 2):  θ = θ_0 + P(θ_d)
SAID (paper eq. 3): θ_i = θ_0,i + λ_{g(i)} · P(θ_{d-m})_i for every parameter tensor i, with m
scales: one per layer group (`layer`, the default: embeddings, each transformer layer, the rest)
or one per tensor (`tensor`); see app/engine/groups.py. The reported d counts the λs:
d = (d - m) projected coordinates + m scales.
θ_d starts at 0 and λ at 1, so the model starts exactly at θ_0 and both get gradients.

Under reduced-precision autocast (bf16) the weights θ_0 + δ would be rounded to bf16 before
each matmul, which loses most of a small δ (docs/PROJECTION.md, "Precision"). So under autocast
every nn.Linear computes x·W_0ᵀ (bf16, as usual) plus x·δᵀ separately and adds the two in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from app.engine.base import canonical_names
from app.engine.errors import SubspaceConfigError
from app.engine.fastfood import Projection, project
from app.engine.groups import (
    DEFAULT_SAID_GROUPS,
    ScaleGroups,
    check_grouping,
    said_groups,
    said_groups_of_model,
)
from app.engine.methods import Method, TaskSettings, register
from app.engine.projections import get_projection
from app.engine.spec import MAX_SEED, SPEC_VERSION
from app.engine.step_size import theta_scale

SubspaceMethod = Literal["said", "did"]


@dataclass(frozen=True)
class SubspaceConfig:
    """How a task is parameterised.

    method: "said" (m extra scales; the paper finds it needs a smaller d) or "did".
    dim: the reported d. 200-1000 suits MiniLM/BERT-size models on GLUE-like tasks (DESIGN.md §3).
    seed: fixes P and the seeded head init; tasks sharing a seed and d share one cached P.
    said_groups: SAID only: "layer" (one λ per layer group, the default) or "tensor".
    """

    method: SubspaceMethod = "said"
    dim: int = 1000
    seed: int = 0
    spec: str = SPEC_VERSION
    said_groups: str = DEFAULT_SAID_GROUPS


def projected_dim(config: SubspaceConfig, num_scales: int) -> int:
    """Length of θ_{d-m} for SAID (d minus its m scales), or d for DID."""
    return config.dim - num_scales if config.method == "said" else config.dim


def validate(config: SubspaceConfig, num_scales: int, D: int) -> None:
    if config.method not in ("said", "did"):
        raise SubspaceConfigError(f"method must be 'said' or 'did', got '{config.method}'")
    if config.spec != SPEC_VERSION:
        raise SubspaceConfigError(f"projection spec '{config.spec}' is unknown; use {SPEC_VERSION}")
    if not 0 <= config.seed <= MAX_SEED:
        raise SubspaceConfigError(f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    check_grouping(config.said_groups)
    low = num_scales + 1 if config.method == "said" else 1
    if not low <= config.dim <= D:
        hint = (
            f" (SAID spends {num_scales} of d on scales, one per {config.said_groups} group)"
            if low > 1
            else ""
        )
        raise SubspaceConfigError(
            f"dim must be in [{low}, {D}] for this model{hint}, got {config.dim}"
        )


def subspace_weights(
    theta0: torch.Tensor | None,
    theta: torch.Tensor,
    lam: torch.Tensor | None,
    segment: torch.Tensor,
    projection: Projection,
    groups: list[int] | None = None,
) -> torch.Tensor:
    """DID: θ_0 + P(θ); SAID: θ_0 + λ_g·P(θ)_j on each run j of tensors of group g. Shapes:
    theta0 (D,) (None: the delta alone), theta (d-m,), lam (m,), segment: int64 run sizes
    summing to D, groups: the λ index of each run (None: run j has λ_j, i.e. `tensor` grouping).
    Returns (D,)."""
    delta = project(theta, projection)  # (D,)
    if lam is None:
        return delta if theta0 is None else theta0 + delta
    sizes = segment.tolist()
    return _ScaledSegments.apply(theta0, lam, delta, sizes, groups or list(range(len(sizes))))


class _ScaledSegments(torch.autograd.Function):
    """θ_0 + λ_{g(j)}·δ_j per run j, one pass over D with no D-sized λ expansion (which costs
    more than the projection on CPU). Backward: ∂/∂δ_j = λ_{g(j)}·g_j, ∂/∂λ_g = Σ_{j in g}
    ⟨g_j, δ_j⟩. With theta0 None it returns λ·δ alone."""

    @staticmethod
    def forward(ctx, theta0, lam, delta, sizes, groups):  # noqa: D102
        out = torch.empty_like(delta)
        scales = lam.tolist()
        bases = theta0.split(sizes) if theta0 is not None else [None] * len(sizes)
        for o, t0, dl, g in zip(out.split(sizes), bases, delta.split(sizes), groups, strict=True):
            if t0 is None:
                torch.mul(dl, scales[g], out=o)
            else:
                torch.add(t0, dl, alpha=scales[g], out=o)
        ctx.save_for_backward(lam, delta)
        ctx.sizes, ctx.groups = sizes, groups
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        lam, delta = ctx.saved_tensors
        grad_delta = torch.empty_like(grad)
        scales = lam.tolist()
        splits = (t.split(ctx.sizes) for t in (grad, delta, grad_delta))
        runs = zip(*splits, strict=True)
        dots = []
        for (g, dl, gd), k in zip(runs, ctx.groups, strict=True):
            torch.mul(g, scales[k], out=gd)
            dots.append(torch.dot(g, dl))
        index = torch.tensor(ctx.groups, device=lam.device)
        grad_lam = torch.zeros(lam.numel(), dtype=grad.dtype, device=lam.device)
        grad_lam.index_add_(0, index, torch.stack(dots))  # one run per λ for `tensor`: exact
        return None, grad_lam.to(lam.dtype), grad_delta, None, None


def _low_precision_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in (
        torch.bfloat16,
        torch.float16,
    )


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
        check_grouping(config.said_groups)
        # SAID's scale groups (DID has no λ; its groups are never used)
        self.groups: ScaleGroups | None = (
            said_groups(self.names, config.said_groups, getattr(model, "config", None))
            if config.method == "said"
            else None
        )
        m = self.groups.m if self.groups is not None else 0
        validate(config, m, self.D)
        device = torch.device(device)
        flat = [params[n].detach().reshape(-1).to(dtype) for n in self.names]
        theta0 = torch.cat(flat).to(device)
        self.register_buffer("theta0", theta0, persistent=False)  # (D,)
        for name, view in zip(self.names, self._split(self.theta0), strict=True):
            params[name].data = view  # the model's weights now alias θ_0: one copy in memory
            params[name].requires_grad_(False)
        self.model = model.to(device)
        self.d_proj = projected_dim(config, m)
        self.theta = nn.Parameter(torch.zeros(self.d_proj, device=device, dtype=dtype))  # θ_{d-m}
        self.lam = nn.Parameter(torch.ones(m, device=device, dtype=dtype)) if self.is_said else None
        # runs of consecutive tensors sharing a λ, and the λ of each run
        runs, self.segment_groups = (
            self.groups.runs(self.sizes) if self.groups is not None else (self.sizes, None)
        )
        self.register_buffer(
            "segment", torch.tensor(runs, device=device), persistent=False
        )  # run sizes for expanding λ
        self.projection: Projection = get_projection(
            self.d_proj, self.D, config.seed, device, dtype
        )
        self._linears = self._find_linears()

    @property
    def is_said(self) -> bool:
        return self.config.method == "said"

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(s) for v, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]

    @property
    def num_scales(self) -> int:
        """m: how many of d are scales (0 for DID)."""
        return self.groups.m if self.groups is not None else 0

    def flat_weights(self) -> torch.Tensor:
        """θ_0 + λ·P(θ_d) as one (D,) tensor, differentiable in θ_d and λ."""
        return subspace_weights(
            self.theta0, self.theta, self.lam, self.segment, self.projection, self.segment_groups
        )

    def flat_delta(self) -> torch.Tensor:
        """λ·P(θ_d) alone as one (D,) tensor, differentiable in θ_d and λ."""
        return subspace_weights(
            None, self.theta, self.lam, self.segment, self.projection, self.segment_groups
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._split(self.flat_weights()), strict=True))

    def forward(self, **batch: torch.Tensor):
        if _low_precision_autocast(self.theta0.device.type):
            return self._forward_split(**batch)
        return functional_call(self.model, self.weights(), args=(), kwargs=batch)

    def _find_linears(self) -> list[tuple[nn.Linear, int, int | None]]:
        """Every nn.Linear whose weight (and bias) are canonical parameters, with the canonical
        index of its weight and of its bias (None without one)."""
        index = {name: i for i, name in enumerate(self.names)}
        linears = []
        for mod_name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            w, b = index.get(prefix + "weight"), index.get(prefix + "bias")
            if w is None or (module.bias is not None and b is None):
                continue  # tied to another name: it keeps the plain (rounded) path
            linears.append((module, w, b))
        return linears

    def _forward_split(self, **batch: torch.Tensor):
        """The forward under bf16 (or fp16) autocast. Each nn.Linear gets its base weight θ_0
        (cast to bf16 by autocast as usual) and a forward hook adds x·δ_Wᵀ + δ_b, computed on
        its own and summed with the base output in fp32, so the rounding of θ_0 cancels out of
        the update instead of swallowing it. Every other parameter (embeddings, norms: ops that
        autocast leaves in fp32) gets θ_0 + δ in fp32 as in the plain forward."""
        delta = self._split(self.flat_delta())
        base = self._split(self.theta0)
        split: set[int] = set()
        handles = []

        def hook(d_w: torch.Tensor, d_b: torch.Tensor | None):
            def add_delta(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
                return output.float() + F.linear(args[0], d_w, d_b).float()

            return add_delta

        try:
            for module, w, b in self._linears:
                split.update((w,) if b is None else (w, b))
                d_b = None if b is None else delta[b]
                handles.append(module.register_forward_hook(hook(delta[w], d_b)))
            weights = {
                name: base[i] if i in split else base[i] + delta[i]
                for i, name in enumerate(self.names)
            }
            return functional_call(self.model, weights, args=(), kwargs=batch)
        finally:
            for handle in handles:
                handle.remove()

    def lr_scales(self) -> dict[str, float]:
        """θ's Adam rate scaled by √(1000/d') (app/engine/step_size.py); λ's is the plain one."""
        return {"theta": theta_scale(self.d_proj)}

    def artifact_fields(self) -> dict:
        """Method-specific task-file fields: SAID's grouping (DID: none)."""
        return {"said_groups": self.config.said_groups} if self.is_said else {}

    def load_vector(self, theta: torch.Tensor, lam: torch.Tensor | None) -> None:
        """Set θ_d (and λ) from stored values, checking shapes."""
        if tuple(theta.shape) != (self.d_proj,):
            said = (
                f" (d - m with m = {self.num_scales} scales, one per "
                f"{self.config.said_groups} group)"
                if self.is_said
                else ""
            )
            raise SubspaceConfigError(
                f"θ has shape {tuple(theta.shape)}, expected ({self.d_proj},){said}"
            )
        with torch.no_grad():
            self.theta.copy_(theta)
            if self.lam is not None:
                m = self.num_scales
                if lam is None or tuple(lam.shape) != (m,):
                    raise SubspaceConfigError(
                        f"λ must have shape ({m},): one per {self.config.said_groups} group, "
                        f"got {None if lam is None else tuple(lam.shape)}"
                    )
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

    def grouping(settings: TaskSettings) -> str:
        return settings.option_dict.get("said_groups", DEFAULT_SAID_GROUPS)

    def build(model, seeded, settings: TaskSettings, device="cpu") -> SubspaceModel:
        config = SubspaceConfig(
            settings.method, settings.dim, settings.seed, said_groups=grouping(settings)
        )
        return SubspaceModel(model, config, device)

    def dim_range(model, seeded, settings: TaskSettings) -> tuple[int, int]:
        D = sum(p.numel() for p in model.parameters())
        if settings.method != "said":
            return 1, D
        return said_groups_of_model(model, grouping(settings)).m + 1, D

    said = frozenset({"said_groups"})
    register(Method("said", SPEC_VERSION, 0.2, "required", build, dim_range, said))
    register(Method("did", SPEC_VERSION, 0.2, "forbidden", build, dim_range))


_register()
