"""Where a `lowrank-v1` task's numbers go: the target layers, the head, the seeded A matrices,
and P(θ) split into each target's B (with its scale folded in) and the head's deltas.

Pure functions of (model shapes, config, θ, λ); training (model.py) and serving (mixed.py)
both rebuild a task through `task_factors`, so they cannot disagree.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from app.engine import spec
from app.engine.errors import SubspaceConfigError
from app.engine.fastfood import Projection, project
from app.engine.lowrank.config import LOWRANK_SPEC, LowRankConfig
from app.engine.projections import get_projection


@dataclass(frozen=True)
class Target:
    name: str  # module path, e.g. "bert.encoder.layer.0.attention.self.query"
    out_features: int
    in_features: int


@dataclass(frozen=True)
class LowRankLayout:
    """Output layout of P: [B_t for t in targets (row-major out×rank)] ‖ [head tensors]."""

    rank: int
    targets: tuple[Target, ...]  # sorted by module name
    head: tuple[tuple[str, tuple[int, ...]], ...]  # seeded parameters, canonical order
    scales: bool

    @property
    def sizes(self) -> list[int]:
        return [t.out_features * self.rank for t in self.targets] + [
            math.prod(shape) for _, shape in self.head
        ]

    @property
    def D_out(self) -> int:
        """Length of P(θ): the numbers one task adds to its base (its resident size)."""
        return sum(self.sizes)

    @property
    def num_scales(self) -> int:
        return len(self.targets) + len(self.head) if self.scales else 0

    @property
    def b_size(self) -> int:
        return sum(t.out_features * self.rank for t in self.targets)


def linear_suffixes(model: nn.Module, seeded: frozenset[str]) -> list[str]:
    """The last name components of the model's nn.Linear layers outside its seeded head: what
    `targets` can name (each family names its projections its own way)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
            and not any(name + "." + p in seeded for p, _ in module.named_parameters())
        }
    )


def layout_for(model: nn.Module, seeded: frozenset[str], config: LowRankConfig) -> LowRankLayout:
    """The layout for `model` (a transformers classifier) whose parameters `seeded` are the
    head the checkpoint lacks. Raises SubspaceConfigError, naming the layers there are, when
    the model type has no default targets or no layer matches the targets."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    try:
        suffixes = config.resolved_targets(model_type)
    except SubspaceConfigError as exc:
        available = ", ".join(linear_suffixes(model, seeded))
        raise SubspaceConfigError(f"{exc}; its nn.Linear layers are named {available}") from exc
    targets = []
    for name, module in sorted(model.named_modules()):
        if name.rsplit(".", 1)[-1] not in suffixes:
            continue
        if not isinstance(module, nn.Linear):
            raise SubspaceConfigError(f"lowrank target '{name}' is not an nn.Linear layer")
        if any(name + "." + p in seeded for p, _ in module.named_parameters()):
            continue  # a seeded (head) layer moves densely, never through A
        targets.append(Target(name, module.out_features, module.in_features))
    if not targets:
        raise SubspaceConfigError(
            f"no nn.Linear layer of this model is named {', '.join(suffixes)}: pick --targets "
            f"from its layer names ({', '.join(linear_suffixes(model, seeded))})"
        )
    params = dict(model.named_parameters())
    head = tuple((n, tuple(params[n].shape)) for n in sorted(seeded))
    return LowRankLayout(config.rank, tuple(targets), head, config.scales)


def target_stream(name: str) -> int:
    """Generator stream of target `name`'s A matrix (spec lowrank-v1)."""
    return zlib.crc32(f"{LOWRANK_SPEC}:A:{name}".encode())


def seeded_a(seed: int, target: Target, rank: int) -> torch.Tensor:
    """A_t: (rank, in) float32, N(0, 1/in) from stream `target_stream`, counters row-major, so
    the first r rows of a rank-R matrix are the rank-r matrix. Rows have unit expected norm,
    which makes θ -> ΔW close to an isometry (docs/PROJECTION.md)."""
    g = spec.gaussians(seed, target_stream(target.name), rank * target.in_features)
    return g.view(rank, target.in_features) / math.sqrt(target.in_features)


def projected_dim(layout: LowRankLayout, dim: int) -> int:
    return dim - layout.num_scales


def dim_range(layout: LowRankLayout) -> tuple[int, int]:
    """d must leave at least one projected coordinate, and no more than P has outputs."""
    return layout.num_scales + 1, layout.num_scales + layout.D_out


def projection_for(
    layout: LowRankLayout, dim: int, seed: int, device, dtype=torch.float32
) -> Projection:
    return get_projection(projected_dim(layout, dim), layout.D_out, seed, device, dtype)


def task_factors(
    layout: LowRankLayout,
    theta: torch.Tensor,
    lam: torch.Tensor | None,
    projection: Projection,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """θ: (d - m,), λ: (m,) or None -> ([λ_t·B_t (out, rank) per target], [λ_i·δ_i per head
    tensor, shaped like it]). Differentiable in θ and λ; linear in θ for fixed λ."""
    delta = project(theta, projection)  # (D_out,)
    pieces = torch.split(delta, layout.sizes)
    shapes = [(t.out_features, layout.rank) for t in layout.targets] + [s for _, s in layout.head]
    out = [p.view(s) for p, s in zip(pieces, shapes, strict=True)]
    if lam is not None:
        out = [p * lam[i] for i, p in enumerate(out)]
    n = len(layout.targets)
    return out[:n], out[n:]
