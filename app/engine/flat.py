"""Models whose parameters are views of one flat buffer in canonical order.

Serving keeps one such buffer per resident task: rebuilding a task is then one copy of θ_0 into
the buffer plus λ·P(θ_d) added in place, and binding a fresh module to it costs a copy of the
module's Python objects only (a meta-device skeleton), never a second D-sized allocation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from app.engine.base import BaseModel, canonical_names


@dataclass(frozen=True)
class FlatLayout:
    names: list[str]  # canonical order
    shapes: list[tuple[int, ...]]
    sizes: list[int]

    @property
    def D(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(s) for v, s in zip(torch.split(flat, self.sizes), self.shapes, strict=True)]


def layout_of(model: nn.Module) -> FlatLayout:
    params = dict(model.named_parameters())
    names = canonical_names(model)
    return FlatLayout(
        names, [tuple(params[n].shape) for n in names], [params[n].numel() for n in names]
    )


def flatten(model: nn.Module, layout: FlatLayout, device: str | torch.device) -> torch.Tensor:
    """The model's parameters as one float32 (D,) tensor on `device`, in canonical order."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).float() for n in layout.names]).to(device)


def share_(model: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> nn.Module:
    """Make `model`'s own parameters views of `flat` (which holds their values, see `flatten`),
    in place, and move its buffers to flat's device: the module and the flat buffer then hold
    ONE copy of the weights (the old storage is released). Tied parameters stay tied."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, view in zip(layout.names, layout.split(flat), strict=True):
            params[name].data = view
    return model.to(flat.device)


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters live on the meta device (no storage)."""
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def bind(skel: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> nn.Module:
    """A new module shaped like `skel` whose parameters are views of `flat` (tied ones stay
    tied), with buffers moved to flat's device, in eval mode."""
    params = dict(skel.named_parameters())
    memo = {
        id(params[name]): nn.Parameter(view, requires_grad=False)
        for name, view in zip(layout.names, layout.split(flat), strict=True)
    }
    return copy.deepcopy(skel, memo).to(flat.device).eval()


def relabelled_skeleton(base: BaseModel, num_labels: int) -> nn.Module | None:
    """A skeleton (see `skeleton`) of `base`'s classifier with a head of `num_labels` outputs,
    built from its config without reading the checkpoint, so that one loaded body serves every
    label count. None when that would not give the model `load_base` gives: the checkpoint
    holds a head of its own (its shape decides whether it loads), or another head changes more
    than the seeded parameters."""
    model = base.model
    if num_labels == model.config.num_labels:
        return skeleton(model)
    if base.mismatched:
        return None
    config = copy.deepcopy(model.config)
    config.num_labels = num_labels
    with torch.device("meta"):
        other = type(model)(config)
    ours = dict(model.named_parameters())
    theirs = dict(other.named_parameters())
    changed = {n for n, p in theirs.items() if n not in ours or ours[n].shape != p.shape}
    if theirs.keys() != ours.keys() or not changed <= base.seeded:
        return None
    buffers = dict(model.named_buffers())
    for name, meta in list(other.named_buffers()):
        if name not in buffers or buffers[name].shape != meta.shape:
            return None
        owner, _, leaf = name.rpartition(".")
        other.get_submodule(owner)._buffers[leaf] = buffers[name]  # the body's, not meta
    for p in other.parameters():
        p.requires_grad_(False)
    return other.eval()
