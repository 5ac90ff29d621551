"""Where a lowrank task's numbers go: the target layers, the head, the seeded A matrices, and
the projected θ split into each target's B (with its scale folded in) and the head's deltas
(specs lowrank-v1 and lowrank-v2, docs/PROJECTION.md).

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
from app.engine.lowrank.config import LOWRANK_V1, LOWRANK_V2, LowRankConfig
from app.engine.projections import get_projection


@dataclass(frozen=True)
class Target:
    name: str  # module path, e.g. "bert.encoder.layer.0.attention.self.query"
    out_features: int
    in_features: int


@dataclass(frozen=True)
class LowRankLayout:
    """Where a task's numbers go (docs/PROJECTION.md). Adapter targets, then head targets (a
    hidden dense layer of the head, lowrank-v2 only), then the dense head tensors; λ follows
    that order. lowrank-v1 projects θ once into [B_t for targets] ‖ [head]; lowrank-v2 projects
    its adapter share into [B_t for targets] and its head share, with a projection of its own,
    into [B_t for head targets] ‖ [head]."""

    rank: int
    targets: tuple[Target, ...]  # sorted by module name
    head: tuple[tuple[str, tuple[int, ...]], ...]  # seeded tensors moved densely, canonical order
    scales: bool
    head_targets: tuple[Target, ...] = ()  # seeded hidden layers of the head moved at rank r
    spec: str = LOWRANK_V1

    @property
    def adapter_sizes(self) -> list[int]:
        return [t.out_features * self.rank for t in self.targets]

    @property
    def head_sizes(self) -> list[int]:
        return [t.out_features * self.rank for t in self.head_targets] + [
            math.prod(shape) for _, shape in self.head
        ]

    @property
    def sizes(self) -> list[int]:
        return self.adapter_sizes + self.head_sizes

    @property
    def D_out(self) -> int:
        """Length of the projected deltas: the numbers one task adds to its base."""
        return sum(self.sizes)

    @property
    def D_adapters(self) -> int:
        return sum(self.adapter_sizes)

    @property
    def D_head(self) -> int:
        return sum(self.head_sizes)

    @property
    def num_scales(self) -> int:
        return len(self.targets) + len(self.head_targets) + len(self.head) if self.scales else 0

    @property
    def b_size(self) -> int:
        """Numbers of λ_t·B_t over adapter and head targets (serving keeps them flat)."""
        return sum(t.out_features * self.rank for t in self.all_targets)

    @property
    def all_targets(self) -> tuple[Target, ...]:
        return self.targets + self.head_targets

    @property
    def split(self) -> bool:
        """lowrank-v2: the head has a projection (and a share of θ) of its own."""
        return self.spec == LOWRANK_V2


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
    the model type has no default targets or no layer matches the targets. lowrank-v2 moves a
    seeded nn.Linear of the head that is not its output layer (RoBERTa's `classifier.dense`,
    DistilBERT's `pre_classifier`: hidden × hidden) at rank r instead of densely."""
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
    head_targets = _head_targets(model, seeded) if config.spec == LOWRANK_V2 else ()
    low_rank = {t.name + ".weight" for t in head_targets}
    params = dict(model.named_parameters())
    head = tuple((n, tuple(params[n].shape)) for n in sorted(seeded) if n not in low_rank)
    return LowRankLayout(
        config.rank, tuple(targets), head, config.scales, head_targets, config.spec
    )


def _head_targets(model: nn.Module, seeded: frozenset[str]) -> tuple[Target, ...]:
    """The seeded nn.Linear layers of the head other than its output layer (whose out features
    are the label count), sorted by name."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    found = []
    for name, module in sorted(model.named_modules()):
        if (
            isinstance(module, nn.Linear)
            and name + ".weight" in seeded
            and module.out_features != num_labels
        ):
            found.append(Target(name, module.out_features, module.in_features))
    return tuple(found)


def target_stream(name: str) -> int:
    """Generator stream of target `name`'s A matrix. The same for both specs (its string names
    lowrank-v1), so v1 and v2 tasks of one seed share their A when served together."""
    return zlib.crc32(f"{LOWRANK_V1}:A:{name}".encode())


def seeded_a(seed: int, target: Target, rank: int) -> torch.Tensor:
    """A_t: (rank, in) float32, N(0, 1/in) from stream `target_stream`, counters row-major, so
    the first r rows of a rank-R matrix are the rank-r matrix. Rows have unit expected norm,
    which makes θ -> ΔW close to an isometry (docs/PROJECTION.md)."""
    g = spec.gaussians(seed, target_stream(target.name), rank * target.in_features)
    return g.view(rank, target.in_features) / math.sqrt(target.in_features)


# lowrank-v2 keeps d' = d - m within 1/16 of the outputs it projects into: fastfood-v1's
# condition number there is 3.5 (3.3 at 1/16.4; 8.5 at 1/8, 18 at 1/4, 26 at 1/3, ~3e4
# square; a Gaussian matrix: 1.7 at 1/16), measured on D = 16,384 (docs/PROJECTION.md).
CONDITIONED_SHARE = 16
HEAD_SEED_OFFSET = 0x68656164  # "head": the head projection's seed is seed ^ this


def projected_dim(layout: LowRankLayout, dim: int) -> int:
    return dim - layout.num_scales


def part_dims(layout: LowRankLayout, dim: int) -> tuple[int, int]:
    """(adapter coordinates, head coordinates) of θ. lowrank-v1: all of θ is one part.
    lowrank-v2: the head's share is in proportion to the outputs it moves (at least one each),
    so every output coordinate gets the same share of θ, and a head of many classes a larger
    one: 40 of d' = 986 for two labels on MiniLM-L6, 504 for fifty."""
    d = projected_dim(layout, dim)
    if not layout.split:
        return d, 0
    head = round(d * layout.D_head / layout.D_out)
    head = min(max(head, 1), d - 1)
    return d - head, head


def dim_range(layout: LowRankLayout) -> tuple[int, int]:
    """lowrank-v1: d must leave at least one projected coordinate, and no more than P has
    outputs. lowrank-v2: two coordinates (one per part) up to 1/16 of the outputs."""
    m = layout.num_scales
    if not layout.split:
        return m + 1, m + layout.D_out
    return m + 2, m + max(2, layout.D_out // CONDITIONED_SHARE)


def head_seed(seed: int) -> int:
    return seed ^ HEAD_SEED_OFFSET


def projections_for(
    layout: LowRankLayout, dim: int, seed: int, device, dtype=torch.float32
) -> tuple[Projection, ...]:
    """(P,) for lowrank-v1; (P_adapters, P_head) for lowrank-v2, from the process-wide cache."""
    d_a, d_h = part_dims(layout, dim)
    if not layout.split:
        return (get_projection(d_a, layout.D_out, seed, device, dtype),)
    return (
        get_projection(d_a, layout.D_adapters, seed, device, dtype),
        get_projection(d_h, layout.D_head, head_seed(seed), device, dtype),
    )


def task_factors(
    layout: LowRankLayout,
    theta: torch.Tensor,
    lam: torch.Tensor | None,
    projections: tuple[Projection, ...],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """θ: (d - m,), λ: (m,) or None -> ([λ_t·B_t (out, rank) per adapter and head target],
    [λ_i·δ_i per dense head tensor, shaped like it]). Differentiable in θ and λ; linear in θ
    for fixed λ."""
    if layout.split:
        adapters, head = projections
        d_a = adapters.d
        delta = torch.cat([project(theta[:d_a], adapters), project(theta[d_a:], head)])
    else:
        delta = project(theta, projections[0])  # (D_out,)
    pieces = torch.split(delta, layout.sizes)
    shapes = [(t.out_features, layout.rank) for t in layout.all_targets]
    shapes += [s for _, s in layout.head]
    out = [p.view(s) for p, s in zip(pieces, shapes, strict=True)]
    if lam is not None:
        out = [p * lam[i] for i, p in enumerate(out)]
    n = len(layout.all_targets)
    return out[:n], out[n:]
