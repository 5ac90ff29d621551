"""Training loop for sequence classification and regression: subspace or full fine-tuning.

Nothing here is specific to a front end: progress, evaluation and checkpoints are reported
through `TrainCallbacks` (as minGPT's trainer does), and cancelling is a callback returning True.
Runs are reproducible: data order comes from (data_seed, epoch) and dropout is reseeded each
step, so a run resumed from a checkpoint continues exactly as if it had never stopped. The
reseeding happens inside `torch.random.fork_rng`, so the process's global random state (CPU
and the training device) is the same after training as before it.

Precision: "fp32" (the default) trains in float32 throughout; "bf16" runs the forward and
backward under bf16 autocast (on CPU or CUDA), where a SubspaceModel keeps its delta out of the
bf16 rounding of the weights (app/engine/subspace.py; the activations are still bf16, which
blurs deltas of per-weight RMS below about 1e-3: docs/PROJECTION.md, "Precision"). The
projection always runs in fp32. Evaluation always runs in fp32, so reported metrics are what a
rebuilt task predicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from app.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from app.engine.data import batches_per_epoch, make_loader
from app.engine.errors import SubspaceConfigError
from app.engine.methods import get_method
from app.engine.metrics import generalisation
from app.engine.subspace import SubspaceModel

FULL_LR = 3e-5
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Optimisation settings. Subspace methods want large learning rates (θ_d lives in a
    well-conditioned d-dimensional space: the paper searches 4 values around 1e-2); full
    fine-tuning wants the usual 1e-5 to 5e-5. Leave learning_rate None for those defaults.
    A subspace method's rate is θ's at d = 1000; at another d it is scaled so that a step
    moves the weights as far (app/engine/step_size.py)."""

    method: str = "said"  # a registered method (app/engine/methods.py) or "full"
    epochs: int | None = None  # either epochs or max_steps; both None means 1 epoch
    max_steps: int | None = None
    # a rate, None for the method's default, or "auto": a short probe picks it from a grid
    # (app/engine/lr_probe.py; the pipeline resolves it before training)
    learning_rate: float | Literal["auto"] | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    schedule: Literal["linear", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None  # steps; None: once per epoch and at the end
    checkpoint_every: int | None = None  # steps; needs a checkpoint path
    # which eval metric picks the best θ_d ("mcc" for CoLA); None: the task type's default
    # (accuracy for classification, pearson for regression)
    metric: str | None = None
    data_seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast, see the module docstring
    # Rows of a fixed sample of the training set scored at each evaluation too: the train
    # metric and the relative generalisation gap (paper §5). 0 turns it off.
    train_eval_rows: int = 512
    # stop once this many evaluations in a row have not improved the selection metric (the
    # best state is kept either way); None: train every step
    patience: int | None = None

    @property
    def lr(self) -> float:
        if self.learning_rate == "auto":
            raise SubspaceConfigError("learning rate 'auto' must be resolved by a probe first")
        if self.learning_rate is not None:
            return self.learning_rate
        return FULL_LR if self.method == "full" else get_method(self.method).default_lr


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise SubspaceConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return precision


def run_context(config: TrainConfig, device: str | torch.device) -> dict[str, str]:
    """What a run's numbers depend on besides its inputs: the device type and the precision.
    Part of every run fingerprint, and recorded in checkpoints so a mismatch is named."""
    return {
        "device": torch.device(device).type,
        "precision": check_precision(config.precision),
    }


@contextmanager
def _seeded_step(seed: int, device: torch.device):
    """Dropout masks from `seed` on the CPU and on `device`, leaving the global random state of
    the process (what other code in it draws from) exactly as it was."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]  # eval metrics of the best state (or last train loss without eval)
    best_step: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


class TrainCallbacks:
    """Hooks the trainer calls; override what you need. Return True from should_stop to cancel."""

    def on_step(self, step: int, total: int, loss: float) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int) -> None: ...

    def on_event(self, kind: str, data: dict) -> None:
        """Something the user should see besides progress: the learning-rate probe's choice, a
        held-out slice, an early stop, a degenerate task."""

    def should_stop(self) -> bool:
        return False


class TrainingCancelled(Exception):
    """Raised when `should_stop` returns True; the last checkpoint (if any) is kept."""


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _lr_lambda(config: TrainConfig, total: int) -> Callable[[int], float]:
    warmup = int(config.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _batches_to_device(batches: Iterable[dict], device: torch.device):
    for batch in batches:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable[dict], device: torch.device) -> torch.Tensor:
    """Logits (N, C) in float32 over a loader, in order. A SubspaceModel builds its weights once
    for the whole pass rather than per batch."""
    was_training = model.training
    model.eval()
    if isinstance(model, SubspaceModel):
        weights = model.weights()
        net = model.model

        def run(**batch):
            return functional_call(net, weights, args=(), kwargs=batch)
    else:
        run = model  # noqa: E731
    out = []
    for batch in _batches_to_device(loader, device):
        batch.pop("labels", None)
        out.append(run(**batch).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def mean_loss(model: nn.Module, dataset, config: TrainConfig, pad_id: int, device) -> float:
    """The training loss averaged over a labelled dataset, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    total, rows = 0.0, 0
    loader = make_loader(dataset, config.eval_batch_size, False, 0, pad_id)
    for batch in _batches_to_device(loader, torch.device(device)):
        n = len(batch["labels"])
        total += model(**batch).loss.float().item() * n
        rows += n
    model.train(was_training)
    return total / max(rows, 1)


def evaluate(model: nn.Module, dataset, space, config: TrainConfig, pad_id: int, device) -> dict:
    """The metrics of `space` (the task's OutputSpace) over a labelled dataset."""
    loader = make_loader(dataset, config.eval_batch_size, False, 0, pad_id)
    logits = predict_logits(model, loader, device)
    return space.score(logits, [dataset[i]["labels"] for i in range(len(dataset))])


def selection_metric(config: TrainConfig, space) -> str:
    """The metric that picks the best state: the configured one if it applies to the task's
    type (else a clear error), or the type's default."""
    return space.check_metric(config.metric) if config.metric else space.default_metric


def score(model: nn.Module, eval_set, probe, config: TrainConfig, pad_id: int, device) -> dict:
    """Held-out metrics, plus the train sample's and the gap when there is a `probe`."""
    space = eval_set.space
    metrics = evaluate(model, eval_set, space, config, pad_id, device)
    if probe is not None:
        train_metrics = evaluate(model, probe, space, config, pad_id, device)
        metrics |= generalisation(train_metrics, metrics, selection_metric(config, space))
    return metrics


def train_probe(train_set, rows: int) -> list | None:
    """A fixed sample of `rows` training rows (the same for every run on this data, whatever
    the seeds) to score at each evaluation for the generalisation gap."""
    if rows <= 0:
        return None
    if rows >= len(train_set):
        return [train_set[i] for i in range(len(train_set))]
    picked = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:rows]
    return [train_set[i] for i in sorted(picked.tolist())]


def param_groups(model: nn.Module, params: dict[str, nn.Parameter], lr: float) -> list[dict]:
    """One optimizer group per learning rate: a subspace model scales θ's rate with d
    (`lr_scales`, app/engine/step_size.py); full fine-tuning has one group at `lr`."""
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in params.items():
        groups.setdefault(scales.get(name, 1.0), []).append(p)
    return [{"params": ps, "lr": lr * scale} for scale, ps in groups.items()]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _trainable(model).items()}


def train(
    model: nn.Module,
    train_set,
    config: TrainConfig,
    pad_id: int,
    eval_set=None,
    callbacks: TrainCallbacks | None = None,
    checkpoint_path: str | None = None,
    run_id: str = "",
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train `model` (a SubspaceModel, or a plain classifier for full fine-tuning) in place and
    leave it holding the best state seen (by `config.metric` on `eval_set`, else the last).

    run_id: a fingerprint of this run's inputs; a checkpoint with another run_id is refused.
    """
    callbacks = callbacks or TrainCallbacks()
    device = torch.device(device)
    per_epoch = batches_per_epoch(len(train_set), config.batch_size)
    total = planned = config.max_steps or per_epoch * (config.epochs or 1)
    params = _trainable(model)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(param_groups(model, params, config.lr), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total))
    eval_every = config.eval_every or per_epoch
    context = run_context(config, device)
    autocast = context["precision"] == "bf16"

    probe = train_probe(train_set, config.train_eval_rows) if eval_set is not None else None
    metric = selection_metric(config, train_set.space)

    step, best_metric, best_step, best_state, history = 0, -math.inf, 0, None, []
    stale = 0  # evaluations since the best one (early stopping)
    if checkpoint_path:
        ckpt = load_checkpoint(checkpoint_path, run_id, context)
        if ckpt is not None:
            step, best_metric, best_step, history = (
                ckpt.step,
                ckpt.best_metric,
                ckpt.best_step,
                ckpt.history,
            )
            ckpt.restore(params, optimizer)
            scheduler.last_epoch = step  # LambdaLR is a pure function of the step
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base_lr * scheduler.lr_lambdas[0](step)
            best_state = ckpt.best_state

    def checkpoint() -> None:
        if checkpoint_path:
            save_checkpoint(
                checkpoint_path,
                Checkpoint(
                    run_id, step, best_metric, best_step, history, best_state, context=context
                ),
                params,
                optimizer,
            )
            callbacks.on_checkpoint(step)

    def maybe_eval() -> None:
        nonlocal best_metric, best_step, best_state, stale
        if eval_set is None:
            return
        metrics = score(model, eval_set, probe, config, pad_id, device)
        history.append({"step": step, **metrics})
        callbacks.on_eval(step, metrics)
        if metrics[metric] > best_metric:
            best_metric, best_step, best_state = metrics[metric], step, _snapshot(model)
            stale = 0
        else:
            stale += 1

    model.train()
    while step < total:
        epoch, skip = divmod(step, per_epoch)
        loader = make_loader(
            train_set,
            config.batch_size,
            True,
            config.data_seed,
            pad_id,
            epoch=epoch,
            skip_batches=skip,
        )
        for batch in _batches_to_device(loader, device):
            if callbacks.should_stop():
                checkpoint()
                raise TrainingCancelled(f"cancelled at step {step}")
            # Reseed dropout per step so a resumed run draws the same masks as an unbroken one.
            with _seeded_step(config.data_seed * 1_000_003 + step, device):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = model(**batch).loss
                loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            callbacks.on_step(step, total, loss.item())
            if step % eval_every == 0 or step == total:
                maybe_eval()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint()
            if config.patience and stale >= config.patience and step < total:
                callbacks.on_event("early_stop", {"step": step, "best_step": best_step,
                                                  f"best_{metric}": best_metric})  # fmt: skip
                total = step  # ends both loops; the best state is restored below
            if step >= total:
                break
    if best_state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best_state[n])
    model.eval()
    best = next((h for h in history if h["step"] == best_step), {})
    metrics = {k: v for k, v in best.items() if k != "step"}
    return TrainResult(step, metrics, best_step or step, history, stale > 0 and step < planned)
