"""LowRankConfig: the hyper-parameters of a `lowrank-v1` task and how to choose them."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.errors import SubspaceConfigError
from app.engine.spec import MAX_SEED

LOWRANK_V1 = "lowrank-v1"  # one projection for adapters and head (still read and served)
LOWRANK_V2 = "lowrank-v2"  # adapters and head projected apart; dense heads low rank
LOWRANK_SPEC = LOWRANK_V2  # what new tasks are
LOWRANK_SPECS = (LOWRANK_V1, LOWRANK_V2)
MAX_RANK = 64

# Linear layers adapted by default, per transformers model type (module-name suffixes, as PEFT's
# target_modules). Query and value projections of every attention block, as LoRA and VeRA do;
# each family names them its own way. A task file records the targets it resolved, so adding a
# family here never changes how an existing file rebuilds.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "albert": ("query", "value"),  # one shared layer: its targets are adapted once
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "mpnet": ("q", "v"),
    "bart": ("q_proj", "v_proj"),  # encoder and decoder self-attention and cross-attention
    "t5": ("q", "v"),
}


@dataclass(frozen=True)
class LowRankConfig:
    """A task whose weight delta on each target matrix has rank `rank` (docs/PROJECTION.md).

    ΔW_t = λ_t · B_t(θ) · A_t: A_t (rank × in) is seeded and shared by every task with the same
    seed, B_t (out × rank) is the fastfood-v1 projection of θ reshaped. The classifier head
    (the parameters the checkpoint lacks) moves by the rest of that projection (lowrank-v1), or
    by a projection of its own share of θ, its hidden dense layer (if any) at rank r too
    (lowrank-v2, docs/PROJECTION.md).

    dim: the reported d, counting the scales when `scales` is on. As for SAID, a few hundred
        to a thousand suits MiniLM/BERT-size models on GLUE-like tasks; the d90 search finds it.
    seed: fixes A, the projection and the head's initial values. Tasks that share a seed share
        one x·Aᵀ product per layer when served together, so keep the default unless you need
        independent tasks.
    rank: r. The served memory per task grows with it (4·rank·Σ out bytes); accuracy at a fixed
        d barely does, because θ, not B, is what is trained (docs/INTRINSIC_DIMENSION.md has the
        sweep: on SST-2 at d = 1000, rank 4 scored 0.769, rank 8 0.750). 4 keeps a MiniLM-L6
        task at 75 KB resident with the default targets.
    targets: module-name suffixes of the nn.Linear layers to adapt (None: DEFAULT_TARGETS for
        the model type). More targets spread the same d over more layers; the sweep shows
        whether that pays for the extra serving memory.
    scales: one learned scale per target and per head tensor (SAID's λ, counted in d). On by
        default: as with SAID against DID, they let each layer pick its own step size.
    """

    dim: int = 1000
    seed: int = 0
    rank: int = 4
    targets: tuple[str, ...] | None = None
    scales: bool = True
    spec: str = LOWRANK_SPEC

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_RANK:
            raise SubspaceConfigError(f"rank must be in [1, {MAX_RANK}], got {self.rank}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SubspaceConfigError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.spec not in LOWRANK_SPECS:
            raise SubspaceConfigError(
                f"spec '{self.spec}' is unknown; use one of {', '.join(LOWRANK_SPECS)}"
            )
        if self.targets is not None:
            names = tuple(self.targets)
            if not names or any(not t or "," in t or t != t.strip() for t in names):
                raise SubspaceConfigError(
                    f"targets must be non-empty module names without commas, got {names}"
                )
            object.__setattr__(self, "targets", tuple(sorted(set(names))))

    def resolved_targets(self, model_type: str) -> tuple[str, ...]:
        if self.targets is not None:
            return self.targets
        if model_type not in DEFAULT_TARGETS:
            raise SubspaceConfigError(
                f"no default lowrank targets for model type '{model_type}': name them "
                "(e.g. --targets query value)"
            )
        return DEFAULT_TARGETS[model_type]
