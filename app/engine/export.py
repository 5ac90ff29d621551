"""Tasks leaving kilotask: a standard PEFT LoRA adapter (lowrank tasks) or a merged Hugging
Face model folder (any task). Written with safetensors and JSON only: peft itself is not needed
to export, only to load the adapter elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.errors import SubspaceConfigError
from app.engine.lowrank import LowRankModel, config_of
from app.engine.lowrank.layout import task_factors
from app.engine.reconstruct import check_compatible, load_task_model, settings_of

FORMATS = ("peft", "hf")


def export_task(task: TaskArtifact, fmt: str, out: str | Path, model: str | None = None) -> Path:
    """Write `task` to the folder `out` (created; must be empty if it exists) as `fmt`."""
    if fmt not in FORMATS:
        raise SubspaceConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SubspaceConfigError(f"--out {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (export_peft if fmt == "peft" else export_hf)(task, out, model)
    return out


def export_hf(task: TaskArtifact, out: Path, model: str | None = None) -> None:
    """The task's full weights merged into the base, as `save_pretrained` writes them, with the
    tokenizer and the label names: `AutoModelForSequenceClassification.from_pretrained(out)`
    gives the task's logits."""
    net, tokenizer = load_task_model(task, model)
    if task.space.target_stats is not None:
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, value in fold_target_stats(task, params).items():
                params[name].copy_(value)
        net.config.problem_type = "regression"
        net.config.id2label, net.config.label2id = {0: "score"}, {"score": 0}
    else:
        net.config.id2label = dict(enumerate(task.labels))
        net.config.label2id = {label: i for i, label in enumerate(task.labels)}
    net.save_pretrained(out)
    tokenizer.save_pretrained(out)


def fold_target_stats(task: TaskArtifact, head: dict[str, torch.Tensor]) -> dict:
    """A regression task's output layer with its (mean, std) folded in, w' = std·w and
    b' = std·b + mean, so an exported model outputs the score itself: the new values of the
    one-output layer's weight and bias among the named tensors `head`."""
    mean, std = task.space.target_stats
    (weight,) = [n for n, t in head.items() if t.ndim == 2 and t.shape[0] == 1]
    bias = weight.removesuffix("weight") + "bias"
    return {weight: head[weight].detach() * std, bias: head[bias].detach() * std + mean}


def export_peft(task: TaskArtifact, out: Path, model: str | None = None) -> None:
    """A PEFT LoRA adapter: lora_A = A_t, lora_B = λ_t·B_t with lora_alpha = r (scaling 1), and
    the head (the layers the base checkpoint lacks) as modules_to_save. Load it with
    `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
    num_labels=C), out)`."""
    if task.rank is None:
        raise SubspaceConfigError(
            f"a {task.method} task is not low-rank, so it has no LoRA form: use --format hf"
        )
    base = load_base(model or task.model, num_labels=task.space.size, seed=task.seed)
    check_compatible(base, task)
    wrapped = LowRankModel(base.model, base.seeded, config_of(settings_of(task)))
    layout = wrapped.layout
    with torch.no_grad():
        bs, heads = task_factors(layout, task.theta, task.lam, wrapped.projections)
    prefix = "base_model.model."
    tensors: dict[str, torch.Tensor] = {}
    params = dict(base.model.named_parameters())
    head: dict[str, torch.Tensor] = {}
    for target, a, b in zip(layout.all_targets, wrapped.a, bs, strict=True):
        if target in layout.head_targets:  # a seeded layer: PEFT saves it whole, merged
            head[target.name + ".weight"] = params[target.name + ".weight"].detach() + b @ a
            continue
        tensors[f"{prefix}{target.name}.lora_A.weight"] = a.contiguous()
        tensors[f"{prefix}{target.name}.lora_B.weight"] = b.contiguous()
    head |= {
        name: params[name].detach() + delta
        for (name, _), delta in zip(layout.head, heads, strict=True)
    }
    if task.space.target_stats is not None:
        head |= fold_target_stats(task, head)
    for name, value in head.items():
        tensors[prefix + name] = value.contiguous()
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    head_modules = _outermost_modules(base.model, set(head))
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": task.model,
        "r": task.rank,
        "lora_alpha": task.rank,  # scaling = alpha / r = 1: B already holds λ_t·B_t
        "lora_dropout": 0.0,
        "target_modules": [t.name for t in layout.targets],
        "modules_to_save": head_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "README.md").write_text(
        f"LoRA adapter exported by kilotask from a {task.spec} task (d = {task.dim}, rank "
        f"{task.rank}, base '{task.model}', {_outputs(task)}).\n"
    )


def _outermost_modules(model: torch.nn.Module, names: set[str]) -> list[str]:
    """The head as PEFT's modules_to_save: for each tensor, the outermost module whose
    parameters are all head tensors (RoBERTa's `classifier`, not `classifier.dense` and
    `classifier.out_proj`: PEFT wraps `classifier` itself for SEQ_CLS, and a wrapper inside a
    wrapper does not load)."""
    params = [n for n, _ in model.named_parameters()]
    outer = set()
    for name in names:
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if all(p in names for p in params if p.startswith(prefix + ".")):
                outer.add(prefix)
                break
    return sorted(outer)


def _outputs(task: TaskArtifact) -> str:
    if task.space.target_stats is not None:
        return "regression: one output, the score itself"
    return f"labels {task.labels}"
