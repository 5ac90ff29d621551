"""What fixes a d90 search's runs (its setup), checked and resolved before any run: the device
type and SAID grouping made explicit, the d range the method accepts on this base, the scales it
spends of d, and the standard error that decides close calls."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from app.engine import step_size
from app.engine.data import LabelledText
from app.engine.errors import EngineError, SubspaceConfigError
from app.engine.metrics import dev_stderr
from app.engine.task_types import OutputSpace, fit_output_space
from app.search.plan import D90Plan


class SearchMismatchError(EngineError):
    """The output folder holds a search with other settings: resuming it would mix results."""


@dataclass(frozen=True)
class D90Setup:
    """What fixes every run's result, besides d and the learning rate."""

    model: str
    budget_steps: int
    batch_size: int = 32
    max_length: int = 128
    metric: str = "accuracy"  # accuracy, f1 or mcc (CoLA); regression: pearson or spearman
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()  # method options (said_groups; lowrank: rank…)
    precision: str = "fp32"  # every run's TrainConfig.precision: fp32 or bf16
    device: str | None = None  # the device type every run trains on (run_d90 sets it)
    task_type: str | None = None  # None: classification (app/engine/task_types.py)

    def recorded_settings(self) -> dict:
        """asdict without what older searches did not record, when it has the value they all
        had, so their folders still match: empty options, SAID's said_groups "tensor" (the only
        SAID before groupings), precision fp32 and device cpu (what a search on CPU ran)."""
        out = asdict(self)
        options = [(k, v) for k, v in self.options if (k, v) != ("said_groups", "tensor")]
        if not options:
            del out["options"]
        else:
            out["options"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in options]
        if self.precision == "fp32":
            del out["precision"]
        if self.device in (None, "cpu"):
            del out["device"]
        if self.task_type in (None, "classification"):
            del out["task_type"]
        return out

    def space(self, train: LabelledText) -> OutputSpace:
        """The output space every run of this search trains (from the training labels)."""
        return fit_output_space(self.task_type, train.labels or [])

    def fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        """What a resumed search must share: settings, plan, data, and the learning-rate rule
        its method runs trained under (app/engine/step_size.py)."""
        settings = [self.recorded_settings(), plan.settings(), {"lr_rule": step_size.RULE}]
        return _digest(settings, train, eval_)

    def runs_fingerprint(self, plan: D90Plan, train: LabelledText, eval_: LabelledText) -> str:
        """What fixes a run's result besides (kind, d, lr), whatever the method and the d range
        searched: searches that share it can share runs (full fine-tuning ones; method runs
        only when the method options match too, see `load_reusable`)."""
        settings = {k: v for k, v in self.recorded_settings().items() if k != "options"}
        return _digest([settings, list(plan.full_lr_grid)], train, eval_)

    def context(self) -> dict[str, str | None]:
        """Device type and precision: runs that differ in them are never mixed in a search."""
        return {"device": self.device, "precision": self.precision}


def resolve_setup(setup: D90Setup, method: str, device: str) -> D90Setup:
    """`setup` with its device type set (refused if it names another) and SAID's grouping
    made explicit (its default is "layer")."""
    import torch

    from app.engine.groups import DEFAULT_SAID_GROUPS

    kind = torch.device(device).type
    if setup.device is not None and setup.device != kind:
        raise SearchMismatchError(
            f"this search trains on {setup.device}, this run would be on {kind}: a search never "
            "mixes CPU and CUDA runs"
        )
    options = dict(setup.options)
    if method == "said":
        options.setdefault("said_groups", DEFAULT_SAID_GROUPS)
    return replace(setup, device=kind, options=tuple(sorted(options.items())))


def check_context(saved: dict, setup: D90Setup, what: str) -> None:
    """Name the first of device type and precision in which `saved` (a state's context)
    differs from `setup`'s; states from before contexts existed have none to compare."""
    for key, value in setup.context().items():
        if key in saved and saved[key] != value:
            raise SearchMismatchError(
                f"{what} trained with {key} {saved[key]}, this search uses {value}: a search "
                "never mixes fp32 and bf16, or CPU and CUDA runs"
            )


def _digest(settings: list, train: LabelledText, eval_: LabelledText) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for data in (train, eval_):
        h.update(json.dumps([data.texts, data.text_pairs, data.labels]).encode())
    return h.hexdigest()


def metric_stderr(
    train: LabelledText, eval_: LabelledText, metric: str
) -> Callable[[float], float | None]:
    """The standard error of a dev metric value on `eval_` (engine.intrinsic.dev_stderr); a
    binary F1 is of the second label in sorted order, as app.engine.metrics scores it, and
    more labels give macro-F1."""
    labels = eval_.labels or []
    positives = None
    if metric == "f1":
        from app.engine.task_types import label_names_from

        names = label_names_from((train.labels or []) + labels)
        positives = sum(label == names[1] for label in labels) if len(names) == 2 else None
    return lambda value: dev_stderr(metric, value, len(labels), positives)


@functools.lru_cache(maxsize=8)
def _dim_range(
    model: str, num_labels: int, seed: int, method: str, options: tuple
) -> tuple[int, int]:
    from app.engine.base import load_base
    from app.engine.methods import TaskSettings, get_method

    base = load_base(model, num_labels, seed)
    settings = TaskSettings.of(method, 1, seed, **dict(options))
    return get_method(method).dim_range(base.model, base.seeded, settings)


def _method_range(setup: D90Setup, method: str, train: LabelledText) -> tuple[int, int]:
    return _dim_range(setup.model, setup.space(train).size, setup.seed, method, setup.options)


def scale_info(setup: D90Setup, method: str, train: LabelledText) -> dict:
    """m (how many of d are scales: SAID's λ, lowrank's per-target scales, 0 for DID) and
    SAID's grouping, as results.json states them."""
    return {"m": _method_range(setup, method, train)[0] - 1,
            "said_groups": dict(setup.options).get("said_groups")}  # fmt: skip


def feasible(plan: D90Plan, setup: D90Setup, train: LabelledText) -> D90Plan:
    """Methods with scales spend m of d on them (SAID: one per layer group or per tensor), so
    d starts above m; max_d stays within what the method accepts (D, or lowrank's projection
    size)."""
    low, top = _method_range(setup, plan.method, train)
    high = min(plan.max_d, top)
    if low >= high:
        groups = dict(setup.options).get("said_groups")
        per = f", one per {groups} group," if groups and plan.method == "said" else ""
        why = f" ({plan.method.upper()} needs d > {low - 1}: its {low - 1} scales{per} count in d)"
        raise SubspaceConfigError(
            f"no d to search for {plan.method}: the range [{low}, {high}] is empty"
            + (why if low > 1 else "")
        )
    return replace(plan, min_d=max(plan.min_d, low), max_d=high)
