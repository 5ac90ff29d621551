"""Method `lowrank` (specs lowrank-v2 for new tasks, lowrank-v1 still read): a task whose delta
on each target matrix has rank r, so that rows of different tasks share one forward pass in
serving. Registered on import."""

from __future__ import annotations

from app.engine.lowrank.config import DEFAULT_TARGETS, LOWRANK_SPEC, LOWRANK_V1, LowRankConfig
from app.engine.lowrank.layout import LowRankLayout, dim_range, layout_for
from app.engine.lowrank.mixed import LowRankFactors, MixedLowRankModel, output_rows
from app.engine.lowrank.model import LowRankModel
from app.engine.methods import Method, TaskSettings, register


def config_of(settings: TaskSettings) -> LowRankConfig:
    """The LowRankConfig of generic task settings (options: rank, targets, scales; spec, which
    a task file records and new tasks leave out: they are lowrank-v2)."""
    opts = settings.option_dict
    targets = opts.get("targets")
    return LowRankConfig(
        dim=settings.dim,
        seed=settings.seed,
        rank=int(opts.get("rank", LowRankConfig.rank)),
        targets=None if targets is None else tuple(targets),
        scales=bool(opts.get("scales", LowRankConfig.scales)),
        spec=opts.get("spec", LOWRANK_SPEC),
    )


def _build(model, seeded, settings: TaskSettings, device="cpu") -> LowRankModel:
    return LowRankModel(model, seeded, config_of(settings), device)


def _dim_range(model, seeded, settings: TaskSettings) -> tuple[int, int]:
    return dim_range(layout_for(model, seeded, config_of(settings)))


register(
    Method(
        name="lowrank",
        spec=LOWRANK_SPEC,
        default_lr=0.2,
        scales="optional",
        build=_build,
        dim_range=_dim_range,
        option_names=frozenset({"rank", "targets", "scales", "spec"}),
        mixable=True,
        older_specs=frozenset({LOWRANK_V1}),
    )
)

__all__ = [
    "DEFAULT_TARGETS",
    "LOWRANK_SPEC",
    "LowRankConfig",
    "LowRankFactors",
    "LowRankLayout",
    "LowRankModel",
    "MixedLowRankModel",
    "config_of",
    "output_rows",
]
