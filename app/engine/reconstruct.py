"""(base model, task) -> a ready classifier with weights θ_0 + λ·P(θ_d), deterministic.

Refuses a base whose weights differ from the task's (digest check) before doing any work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from app.engine.artifact import TaskArtifact
from app.engine.base import BaseModel, load_base
from app.engine.errors import BaseModelMismatchError, SubspaceConfigError
from app.engine.flat import FlatLayout
from app.engine.groups import said_groups
from app.engine.methods import TaskSettings, get_method
from app.engine.projections import get_projection
from app.engine.spec import SPEC_VERSION
from app.engine.subspace import SubspaceConfig, projected_dim


def check_compatible(base: BaseModel, task: TaskArtifact, D: int | None = None) -> None:
    """Raise BaseModelMismatchError unless `base` is exactly the weights `task` was trained on.
    `D`: the parameter count with the task's head, where `base` was loaded with another."""
    if base.digest != task.base_digest:
        raise BaseModelMismatchError(
            f"task was trained on base '{task.model}' with digest {task.base_digest[:12]}…, but "
            f"'{base.model_id}' has digest {base.digest[:12]}…: use the same base weights"
        )
    D = base.num_parameters if D is None else D
    if D != task.D:
        raise BaseModelMismatchError(f"task expects D={task.D} parameters, this base has {D}")


def reconstruct(
    base: BaseModel, task: TaskArtifact, device: str | torch.device = "cpu"
) -> nn.Module:
    """Materialise the task's weights into `base.model` (consumed) and return it in eval mode.

    `base` must have been loaded with the task's seed and label count (see `load_task_model`).
    """
    check_compatible(base, task)
    wrapped = get_method(task.method).build(base.model, base.seeded, settings_of(task), device)
    wrapped.load_vector(task.theta.to(device), None if task.lam is None else task.lam.to(device))
    return wrapped.materialize().eval()


def settings_of(task: TaskArtifact) -> TaskSettings:
    """The method settings a task file records (SAID: its grouping, "tensor" for a file
    without one; lowrank: rank, targets, scales and its spec)."""
    if task.rank is None:
        return TaskSettings.of(task.method, task.dim, task.seed, said_groups=task.groups)
    return TaskSettings.of(
        task.method,
        task.dim,
        task.seed,
        rank=task.rank,
        targets=tuple(task.targets.split(",")) if task.targets else None,
        scales=task.lam is not None,
        spec=task.spec,
    )


def load_task_model(
    task: TaskArtifact, model: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, object]:
    """Load the task's base (or `model`, a local copy of it) and rebuild the task on it.
    Returns (classifier, tokenizer)."""
    base = load_base(model or task.model, num_labels=task.space.size, seed=task.seed)
    return reconstruct(base, task, device), base.tokenizer


@torch.no_grad()
def add_task_delta_(
    flat: torch.Tensor, task: TaskArtifact, layout: FlatLayout | Sequence[int]
) -> None:
    """flat += λ·P(θ_d) in place, where `flat` holds θ_0 (canonical order, see engine.flat).

    The same weights `reconstruct` produces, without wrapping a model: serving uses it to
    rebuild a task into a buffer it already owns. `layout`: the base's FlatLayout (a SAID task
    grouped by layer needs its parameter names), or just the tensor sizes (enough for DID and
    for SAID grouped by tensor).
    """
    sizes = list(layout.sizes) if isinstance(layout, FlatLayout) else list(layout)
    names = layout.names if isinstance(layout, FlatLayout) else None
    if task.spec != SPEC_VERSION:
        raise SubspaceConfigError(
            f"a {task.method} task ({task.spec}) is not a dense delta: serve it with "
            "MixedLowRankModel (app/engine/lowrank/mixed.py)"
        )
    config = SubspaceConfig(method=task.method, dim=task.dim, seed=task.seed, spec=task.spec)
    groups = None
    if task.method == "said":
        if names is None and task.groups != "tensor":
            raise SubspaceConfigError(
                f"a SAID task grouped by {task.groups} needs the base's parameter names: pass "
                "its FlatLayout, not the tensor sizes"
            )
        groups = said_groups(names or [str(i) for i in range(len(sizes))], task.groups)
    d_proj = projected_dim(config, groups.m if groups is not None else 0)
    if tuple(task.theta.shape) != (d_proj,):
        raise SubspaceConfigError(f"θ has shape {tuple(task.theta.shape)}, expected ({d_proj},)")
    projection = get_projection(d_proj, flat.numel(), task.seed, flat.device, flat.dtype)
    delta = projection.forward(task.theta.to(flat.device, flat.dtype))
    if config.method == "did":
        flat.add_(delta)
        return
    if task.lam is None or task.lam.numel() != groups.m:
        raise SubspaceConfigError(f"λ must have shape ({groups.m},)")
    scales = task.lam.tolist()
    runs, run_groups = groups.runs(sizes)
    for out, piece, g in zip(
        torch.split(flat, runs), torch.split(delta, runs), run_groups, strict=True
    ):
        out.add_(piece, alpha=scales[g])
