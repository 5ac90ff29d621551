"""Engine speed: subspace training steps vs full fine-tuning, reconstruction vs one copy of D.

Usage: python bench/bench_engine.py [--device cpu|cuda] [--models ...] [--dims 1000 20000]
       [--batch 32] [--seq N] [--reps 5] [--json FILE]
CPU default: MiniLM-L6 (the real base), batch 32 × 64, float32. CUDA default: random-init
BERT-base and RoBERTa-large shapes (speed depends on shapes only), batch 32 × 128, bf16 autocast.
For each model: a full fine-tuning step (AdamW), SAID and DID steps at each d, rebuilding all
weights θ_0 + λ·P(θ_d) into a buffer (the serving path), the floor of copying D floats once, peak
GPU memory per step, and the projection's state as a share of the model's weights. Every ratio is
against a baseline timed in the same run. Prints a table; --json writes it all.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    RobertaConfig,
)

import app  # noqa: E402, F401  (huge pages for D-sized CPU buffers)
from app.engine.artifact import TaskArtifact  # noqa: E402
from app.engine.flat import flatten, layout_of  # noqa: E402
from app.engine.lowrank import LowRankConfig, LowRankModel  # noqa: E402
from app.engine.projections import get_projection  # noqa: E402
from app.engine.reconstruct import add_task_delta_  # noqa: E402
from app.engine.subspace import SubspaceConfig, SubspaceModel, projected_dim  # noqa: E402

CONFIGS = {
    "bert-base": lambda: BertConfig(num_labels=2),
    "roberta-large": lambda: RobertaConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        vocab_size=50265,
        max_position_embeddings=514,
        num_labels=2,
    ),
}


def load_model(name: str) -> torch.nn.Module:
    if name in CONFIGS:
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(CONFIGS[name]())
    from app.engine.base import load_base

    return load_base(name, num_labels=2, seed=0).model


def timed(fn, reps: int, device: torch.device, warmup: int = 2) -> tuple[float, int]:
    """Median seconds of `reps` calls after `warmup`, and peak CUDA bytes during them."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return statistics.median(times), peak


def train_step(model, params, batch, lr):
    opt = torch.optim.AdamW(params, lr=lr)
    device = next(iter(params)).device

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_model(name: str, args, device: torch.device) -> list[dict]:
    base = load_model(name)
    D = sum(p.numel() for p in base.parameters())
    model_bytes = D * 4  # float32 weights, as trained here
    vocab = base.config.vocab_size
    batch = {
        "input_ids": torch.randint(5, vocab, (args.batch, args.seq), device=device),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (args.batch,), device=device),
    }
    rows = []

    def row(what: str, seconds: float, baseline: float, peak: int = 0, **extra) -> None:
        rows.append(
            {"model": name, "what": what, "seconds": seconds, "ratio": seconds / baseline}
            | ({"peak_gb": peak / 2**30} if peak else {})
            | extra
        )

    full = copy.deepcopy(base).to(device).train()
    step = train_step(full, list(full.parameters()), batch, 3e-5)
    full_s, full_peak = timed(step, args.reps, device)
    row("full fine-tuning step", full_s, full_s, full_peak)
    del full

    for method in [m for m in ("said", "did") if m in args.methods]:
        for dim in args.dims:
            sub = SubspaceModel(copy.deepcopy(base), SubspaceConfig(method, dim, 0), device=device)
            sub.train()
            params = [p for p in sub.parameters() if p.requires_grad]
            s, peak = timed(train_step(sub, params, batch, 0.2), args.reps, device)
            share = sub.projection.nbytes / model_bytes
            row(f"{method.upper()} step, d={dim}", s, full_s, peak, projection_share=share)
            del sub, params

    if "lowrank" in args.methods:
        head = frozenset(n for n, _ in base.named_parameters() if n.startswith("classifier"))
        for dim in args.dims:
            config = LowRankConfig(dim=dim)  # default rank and targets
            low = LowRankModel(copy.deepcopy(base), head, config, device=device).train()
            params = [p for p in low.parameters() if p.requires_grad]
            s, peak = timed(train_step(low, params, batch, 0.2), args.reps, device)
            row(f"lowrank step, d={dim}, r={config.rank}", s, full_s, peak)
            del low, params
    if args.methods == ["lowrank"]:
        return rows

    layout = layout_of(base)
    theta0 = flatten(base, layout, device)
    out = torch.empty_like(theta0)
    copy_s, _ = timed(lambda: out.copy_(theta0), 10, device)
    row(f"copy D={D / 1e6:.1f}M floats once (floor)", copy_s, copy_s)
    for dim in args.dims:
        m = len(layout.sizes)
        gen = torch.Generator().manual_seed(dim)
        d_proj = projected_dim(SubspaceConfig("said", dim, 0), m)
        task = TaskArtifact(
            model=name, base_digest="-", seed=0, method="said", dim=dim, D=D, labels=["0", "1"],
            text_column="sentence", text_pair_column=None, max_length=args.seq,
            theta=torch.randn(d_proj, generator=gen), lam=1 + 0.1 * torch.randn(m, generator=gen),
        )  # fmt: skip
        get_projection(d_proj, D, 0, device)  # built once per (seed, d), shared by tasks

        def rebuild(task=task):
            out.copy_(theta0)
            add_task_delta_(out, task, layout.sizes)

        s, _ = timed(rebuild, args.reps, device)
        row(f"rebuild all weights, SAID d={dim}", s, copy_s)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--dims", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--methods", nargs="+", default=["said", "did", "lowrank"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.models = args.models or (["bert-base", "roberta-large"] if cuda else ["minilm-l6"])
    args.seq = args.seq or (128 if cuda else 64)

    started = time.perf_counter()
    rows = [r for name in args.models for r in bench_model(name, args, device)]
    env = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "precision": "bf16 autocast" if cuda else "float32",
        "projection": type(get_projection(1000, 4096, 0, device)).__name__,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(env))
    header = ("model", "measurement", "ms", "ratio", "peak GB", "P/model")
    print("{:14s} {:38s} {:>9s} {:>7s} {:>8s} {:>8s}".format(*header))
    for r in rows:
        peak = f"{r['peak_gb']:8.2f}" if "peak_gb" in r else f"{'':8s}"
        share = f"{r['projection_share']:8.3%}" if "projection_share" in r else ""
        print(
            f"{r['model']:14s} {r['what']:38s} {r['seconds'] * 1e3:9.1f} {r['ratio']:7.2f} "
            f"{peak} {share}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
