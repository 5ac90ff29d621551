"""The registry of task methods: a method's name -> how its tasks are trained and rebuilt.

Each method registers itself once (as PEFT's tuners do with `register_peft_method`), so the
trainer, the pipeline, reconstruction and serving look a method up here instead of branching on
its name. SAID and DID (app/engine/subspace.py) and lowrank (app/engine/lowrank/) register
themselves when `app.engine` imports them; this module imports none of its members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from app.engine.errors import SubspaceConfigError

Scales = Literal["required", "forbidden", "optional"]


class TaskModel(Protocol):
    """What training needs from a method's wrapper around a base classifier."""

    theta: nn.Parameter  # (d - m,) the projected coordinates
    lam: nn.Parameter | None  # (m,) per-tensor (or per-target) scales, or None
    D: int  # parameters of the base classifier (ties a task to its base)

    def __call__(self, **batch: torch.Tensor) -> Any: ...

    def load_vector(self, theta: torch.Tensor, lam: torch.Tensor | None) -> None: ...

    def materialize(self) -> nn.Module: ...

    def lr_scales(self) -> dict[str, float]: ...  # parameter name -> Adam-rate multiplier


@dataclass(frozen=True)
class TaskSettings:
    """A task's method-independent identity plus its method's own options (rank, targets)."""

    method: str
    dim: int
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs, hashable

    @classmethod
    def of(cls, method: str, dim: int, seed: int = 0, **options: Any) -> TaskSettings:
        kept = tuple(
            sorted(
                (k, tuple(v) if isinstance(v, list) else v)
                for k, v in options.items()
                if v is not None
            )
        )
        return cls(method, dim, seed, kept)

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Method:
    """One registered method.

    spec: the projection spec its task files name (docs/PROJECTION.md).
    build: (base classifier, names of its seeded parameters, settings, device) -> TaskModel.
    dim_range: (base classifier, seeded names, settings) -> the (low, high) d it accepts.
    option_names: method-specific options it accepts; any other option is refused.
    mixable: rows of different tasks of this method can share one forward pass (serving).
    older_specs: specs of earlier task files it still reads and serves (new tasks: `spec`).
    """

    name: str
    spec: str
    default_lr: float
    scales: Scales
    build: Callable[..., TaskModel]
    dim_range: Callable[..., tuple[int, int]]
    option_names: frozenset[str] = frozenset()
    mixable: bool = False
    older_specs: frozenset[str] = frozenset()

    @property
    def specs(self) -> frozenset[str]:
        return self.older_specs | {self.spec}


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Register `method` under its name (lower case, unique)."""
    if method.name != method.name.lower() or not method.name.isidentifier():
        raise ValueError(f"method names are lower-case identifiers, got {method.name!r}")
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        known = ", ".join(sorted(_METHODS))
        raise SubspaceConfigError(f"method must be one of {known}, got {name!r}")
    return _METHODS[name]


def method_names() -> list[str]:
    return sorted(_METHODS)


def known_specs() -> set[str]:
    return {spec for m in _METHODS.values() for spec in m.specs}


def check_settings(
    model: nn.Module, seeded: frozenset[str], settings: TaskSettings
) -> tuple[int, int]:
    """Validate `settings` for this base (options known, d in range); returns the d range."""
    method = get_method(settings.method)
    unknown = set(settings.option_dict) - method.option_names
    if unknown:
        raise SubspaceConfigError(
            f"option(s) {', '.join(sorted(unknown))} do not apply to method '{method.name}'"
        )
    low, high = method.dim_range(model, seeded, settings)
    if not low <= settings.dim <= high:
        groups = settings.option_dict.get("said_groups")
        per = f", one per {groups} group" if groups else ""
        hint = f" ({low - 1} of d are scales{per})" if low > 1 else ""
        raise SubspaceConfigError(
            f"dim must be in [{low}, {high}] for {method.name} on this model{hint}, "
            f"got {settings.dim}"
        )
    return low, high
