"""Training checkpoints: trainable tensors, optimiser state, step and best-so-far, in one
safetensors file written atomically. For a subspace run it is a few kilobytes (θ_d, λ, Adam).

The data order needs no storage: it is a function of (data_seed, epoch), and the step fixes
the position inside the epoch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.engine.errors import CheckpointError


@dataclass
class Checkpoint:
    run_id: str
    step: int
    best_metric: float
    best_step: int
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    context: dict[str, str] = field(default_factory=dict)  # device type and precision
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _groups: list[dict] = field(default_factory=list, repr=False)

    def restore(
        self, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer
    ) -> None:
        """Copy saved parameters and optimiser state into live objects."""
        with torch.no_grad():
            for name, p in params.items():
                if f"param/{name}" not in self._tensors:
                    raise CheckpointError(f"checkpoint lacks parameter '{name}'")
                p.copy_(self._tensors[f"param/{name}"])
        state: dict[int, dict] = {}
        for key, t in self._tensors.items():
            if key.startswith("opt/"):
                _, idx, slot = key.split("/", 2)
                state.setdefault(int(idx), {})[slot] = t
        optimizer.load_state_dict({"state": state, "param_groups": self._groups})


def save_checkpoint(
    path: str | os.PathLike,
    ckpt: Checkpoint,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> None:
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for slot, t in slots.items():
            tensors[f"opt/{idx}/{slot}"] = torch.as_tensor(t).detach().cpu().contiguous()
    for n, t in (ckpt.best_state or {}).items():
        tensors[f"best/{n}"] = t.detach().cpu().contiguous()
    meta = {
        "run_id": ckpt.run_id,
        "step": ckpt.step,
        "best_metric": ckpt.best_metric if math.isfinite(ckpt.best_metric) else None,
        "best_step": ckpt.best_step,
        "history": ckpt.history,
        "param_groups": opt["param_groups"],
        "context": ckpt.context,
    }
    tmp = Path(f"{path}.tmp")
    save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta)})
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def load_checkpoint(
    path: str | os.PathLike, run_id: str, context: dict[str, str] | None = None
) -> Checkpoint | None:
    """The checkpoint at `path`, or None if there is none yet. Refuses another run's file, and
    names the difference when it was trained on another device type or in another precision
    (`context`, e.g. {"device": "cuda", "precision": "bf16"}): their numbers differ."""
    if not Path(path).exists():
        return None
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        meta = json.loads(header["__metadata__"]["checkpoint"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    saved = meta.get("context") or {}
    for key, value in (context or {}).items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"checkpoint {path} was trained with {key} {saved[key]}, this run uses {value}: "
                f"resume with the same {key} (a run never mixes fp32 and bf16, or CPU and CUDA), "
                "or use another checkpoint path"
            )
    if meta["run_id"] != run_id:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run; delete it or use another path"
        )
    best = {k[5:]: t for k, t in tensors.items() if k.startswith("best/")} or None
    best_metric = meta["best_metric"] if meta["best_metric"] is not None else -math.inf
    return Checkpoint(
        run_id,
        meta["step"],
        best_metric,
        meta["best_step"],
        meta["history"],
        best,
        saved,
        _tensors=tensors,
        _groups=meta["param_groups"],
    )
