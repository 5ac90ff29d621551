"""End-to-end engine calls that the CLI and the workers share: train a task from labelled rows,
and predict with a task. Plain dataclasses in, plain results out; no I/O beyond files named."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from app.engine import step_size
from app.engine.artifact import TaskArtifact
from app.engine.base import check_max_length, load_base, position_limit
from app.engine.data import (
    ColumnSpec,
    LabelledText,
    TokenizedDataset,
    batches_per_epoch,
    make_loader,
    split_rows,
)
from app.engine.errors import DataFormatError, SubspaceConfigError
from app.engine.groups import DEFAULT_SAID_GROUPS
from app.engine.lr_probe import ProbeResult, holdout_rows, probe_lr
from app.engine.methods import TaskSettings, check_settings, get_method
from app.engine.metrics import kept_in_task, reported
from app.engine.quality import Verdict, judge
from app.engine.reconstruct import load_task_model
from app.engine.task_types import CLASSIFICATION, OutputSpace, fit_output_space
from app.engine.trainer import (
    TrainCallbacks,
    TrainConfig,
    predict_logits,
    run_context,
    score,
    selection_metric,
    train,
    train_probe,
)


@dataclass
class TrainRequest:
    """One training run. `dim` and `seed` are ignored for method "full"."""

    model: str
    train_data: LabelledText
    eval_data: LabelledText | None = None
    dim: int = 1000
    seed: int = 0
    max_length: int = 128
    storage_dtype: str = "float32"
    config: TrainConfig = field(default_factory=TrainConfig)
    # "classification" or "regression"; None: classification, refused for numeric-looking
    # labels (app/engine/task_types.py)
    task_type: str | None = None
    # method-specific: SAID: said_groups ("layer" unless given); lowrank: rank, targets, scales
    options: dict = field(default_factory=dict)
    # without eval data, hold out a seeded slice of the training data (10 %, at most 2,000
    # rows) to evaluate on and select the best state by; the CLI and the service turn it on
    holdout: bool = False


@dataclass
class TrainOutcome:
    metrics: dict[str, float]
    step: int
    history: list[dict]
    artifact: TaskArtifact | None  # None for full fine-tuning
    model: torch.nn.Module  # the trained classifier (materialised for subspace runs)
    tokenizer: object
    lr: float | None = None  # the learning rate trained with (None: the method's default)
    probe: ProbeResult | None = None  # how `lr` was picked, for learning_rate "auto"
    held_out_rows: int | None = None  # training rows held out for evaluation (no eval data)
    verdict: Verdict | None = None  # whether the task beats a constant prediction
    stopped_early: bool = False

    @property
    def recipe(self) -> dict | None:
        """How the task was trained, as its row keeps it: the rate and, when a probe picked
        it, each rate's held-out loss."""
        if self.lr is None:
            return None
        recipe: dict = {"lr": self.lr}
        if self.probe is not None:
            recipe["probe"] = self.probe.as_event()["losses"]
        return recipe


def method_options(req: TrainRequest) -> dict:
    """The request's method options with SAID's grouping made explicit (its default is
    "layer"), so two requests that train the same way have the same options."""
    options = dict(req.options)
    if req.config.method == "said":
        options.setdefault("said_groups", DEFAULT_SAID_GROUPS)
    return options


def run_fingerprint(req: TrainRequest, device: str | torch.device = "cpu") -> str:
    """sha256 over everything that determines the run, so a checkpoint resumes only itself:
    the inputs, the settings, and the device type and precision it trains in."""
    h = hashlib.sha256()
    cfg = {
        k: v
        for k, v in asdict(req.config).items()
        if k not in ("eval_every", "checkpoint_every", "precision")
    }
    key = [req.model, req.dim, req.seed, req.max_length, cfg, run_context(req.config, device)]
    if req.config.method != "full":
        key.append({"lr_rule": step_size.RULE})  # checkpoints from before the rule: refused
    if req.task_type not in (None, CLASSIFICATION):
        key.append(req.task_type)  # classification runs keep the fingerprints they had
    if req.holdout and req.eval_data is None:
        key.append("holdout")
    options = method_options(req)
    if options:
        key.append({k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    h.update(json.dumps(key, sort_keys=True).encode())
    for data in (req.train_data, req.eval_data):
        if data is not None:
            h.update(json.dumps([data.texts, data.text_pairs, data.labels]).encode())
    return h.hexdigest()


def _dataset(data: LabelledText, tokenizer, max_length: int, space: OutputSpace):
    if data.labels is None:
        raise DataFormatError("training and evaluation data need a label column")
    space.targets(data.labels)  # fails early, naming unknown labels or bad numbers
    return TokenizedDataset(data, tokenizer, max_length, space)


def holdout_count(data: LabelledText) -> int:
    """Rows held out without eval data: 10 %, at most 2,000; none below 20 rows."""
    n = len(data.texts)
    return 0 if n < 20 else min(2000, n // 10)


def _model_maker(req: TrainRequest, base, device):
    """A fresh model to train at each call: the method's wrapper at θ = 0, or for full
    fine-tuning the base with its initial weights restored (the probe trains several)."""
    method = req.config.method
    if method == "full":
        if req.options:
            raise SubspaceConfigError(
                f"option(s) {', '.join(sorted(req.options))} do not apply to full fine-tuning"
            )
        # only a probe trains the base more than once: then keep its initial weights
        initial = None
        if req.config.learning_rate == "auto":
            initial = {k: v.detach().clone() for k, v in base.model.state_dict().items()}

        def fresh_full() -> torch.nn.Module:
            if initial is not None:
                base.model.load_state_dict(initial)
            model = base.model.to(device)
            for p in model.parameters():
                p.requires_grad_(True)
            return model

        return fresh_full
    settings = TaskSettings.of(method, req.dim, req.seed, **method_options(req))
    check_settings(base.model, base.seeded, settings)
    return lambda: get_method(method).build(base.model, base.seeded, settings, device)


def _probe(req, train_data, base, space, make_model, callbacks, device) -> ProbeResult:
    """Resolve learning_rate "auto" (app/engine/lr_probe.py) on the training rows."""
    rest, held = split_rows(train_data, holdout_rows(len(train_data.texts)), req.seed + 1)
    train_set = _dataset(rest, base.tokenizer, req.max_length, space)
    held_set = _dataset(held, base.tokenizer, req.max_length, space)
    config = req.config
    total = config.max_steps or batches_per_epoch(len(train_set), config.batch_size) * (
        config.epochs or 1
    )
    pad_id = base.tokenizer.pad_token_id or 0
    return probe_lr(make_model, train_set, held_set, config, total, pad_id, device, callbacks)


def output_space(req: TrainRequest) -> OutputSpace:
    """The task's output space from its training labels, and its selection metric checked."""
    space = fit_output_space(req.task_type, req.train_data.labels or [])
    if req.config.metric is not None:
        space.check_metric(req.config.metric)
    return space


def train_task(
    req: TrainRequest,
    callbacks: TrainCallbacks | None = None,
    checkpoint_path: str | None = None,
    device: str | torch.device = "cpu",
) -> TrainOutcome:
    """Fine-tune `req.model` on `req.train_data` and return the task (and its metrics).

    For float16 storage the reported metrics are re-measured on the rounded vector, so they are
    exactly what a rebuild of the saved file gives.
    """
    method = req.config.method
    if req.storage_dtype not in ("float32", "float16"):
        raise SubspaceConfigError("storage dtype must be float32 or float16")
    space = output_space(req)
    base = load_base(req.model, num_labels=space.size, seed=req.seed)
    check_max_length(base, req.max_length)
    callbacks = callbacks or TrainCallbacks()
    pad_id = base.tokenizer.pad_token_id or 0
    train_data, eval_data, held_out_rows = req.train_data, req.eval_data, None
    if eval_data is None and req.holdout and (held_out_rows := holdout_count(train_data)):
        train_data, eval_data = split_rows(train_data, held_out_rows, req.config.data_seed)
        callbacks.on_event("held_out", {"rows": held_out_rows, "of": len(req.train_data.texts)})
    train_set = _dataset(train_data, base.tokenizer, req.max_length, space)
    eval_set = _dataset(eval_data, base.tokenizer, req.max_length, space) if eval_data else None
    make_model = _model_maker(req, base, device)
    config, probe = req.config, None
    if config.learning_rate == "auto":
        probe = _probe(req, train_data, base, space, make_model, callbacks, device)
        config = replace(config, learning_rate=probe.lr)
        callbacks.on_event("lr_probe", probe.as_event())
    model = make_model()
    result = train(
        model,
        train_set,
        config,
        pad_id,
        eval_set,
        callbacks,
        checkpoint_path,
        run_fingerprint(req, device),
        device,
    )
    verdict = None
    if eval_set is not None:
        selected = selection_metric(config, space)
        verdict = judge(space, selected, result.metrics[selected], train_data.labels,
                        eval_data.labels)  # fmt: skip
        if verdict.degenerate:
            callbacks.on_event("degenerate", {"message": verdict.warning()})
    extra = dict(lr=config.lr, probe=probe, held_out_rows=held_out_rows, verdict=verdict,
                 stopped_early=result.stopped_early)  # fmt: skip
    metrics = dict(result.metrics) | (verdict.as_metrics() if verdict else {})
    if method == "full":
        return TrainOutcome(
            metrics, result.step, result.history, None, model, base.tokenizer, **extra
        )

    artifact = TaskArtifact(
        model=req.model,
        base_digest=base.digest,
        seed=req.seed,
        method=method,
        dim=req.dim,
        D=model.D,
        labels=list(space.labels),
        text_column=req.train_data.columns.text,
        text_pair_column=req.train_data.columns.text_pair,
        max_length=req.max_length,
        theta=model.theta,
        lam=model.lam,
        dtype=req.storage_dtype,
        spec=get_method(method).spec,
        task_type=None if space.task_type == CLASSIFICATION else space.task_type,
        target_stats=None if space.target_stats is None else list(space.target_stats),
        lr=config.lr,
        **model.artifact_fields(),
    )
    model.load_vector(
        artifact.theta.to(device), None if artifact.lam is None else artifact.lam.to(device)
    )
    if eval_set is not None and req.storage_dtype != "float32":
        sample = train_probe(train_set, config.train_eval_rows)
        metrics = score(model, eval_set, sample, config, pad_id, device)
        metrics |= verdict.as_metrics() if verdict else {}
    selected = selection_metric(config, space)
    artifact = replace(artifact, metrics=kept_in_task(reported(metrics), selected))
    return TrainOutcome(
        metrics,
        result.step,
        result.history,
        artifact,
        model.materialize(),
        base.tokenizer,
        **extra,
    )


@dataclass
class Prediction:
    """Per row what the API shows ({"label", "scores"}, or {"score"} for regression), and the
    metrics when the input has labels."""

    outputs: list[dict]
    metrics: dict[str, float] | None

    @property
    def labels(self) -> list[str]:
        """Classification: the predicted label per row."""
        return [row["label"] for row in self.outputs]

    @property
    def scores(self) -> list[list[float]]:
        """Classification: softmax probabilities per row, in task label order."""
        return [list(row["scores"].values()) for row in self.outputs]


def predict_task(
    task: TaskArtifact,
    data: LabelledText,
    model: str | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Prediction:
    """Rebuild `task` on its base (or `model`) and predict `data` in order."""
    net, tokenizer = load_task_model(task, model, device)
    # a file from elsewhere may ask for more positions than this base has: truncate to them
    max_length = min(task.max_length, position_limit(net, tokenizer))
    ds = TokenizedDataset(data, tokenizer, max_length, None)
    logits = predict_logits(
        net,
        make_loader(ds, batch_size, False, 0, tokenizer.pad_token_id or 0),
        torch.device(device),
    )
    space = task.space
    metrics = None if data.labels is None else space.score(logits, space.targets(data.labels))
    return Prediction(space.present(logits), metrics)


def columns_of(task: TaskArtifact) -> ColumnSpec:
    """The input columns a task was trained on (to read prediction files the same way)."""
    return ColumnSpec(text=task.text_column, text_pair=task.text_pair_column)


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size
