"""Engine speed on this machine: subspace training step vs full fine-tuning, and reconstruction.

Usage: python bench/bench_engine.py [--model minilm-l6] [--batch 32] [--seq 64] [--dims 1000]
Prints a table (and --json FILE writes it). Every ratio is against a baseline timed in the same
run: the full fine-tuning step for training, one copy of D floats for reconstruction.
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

from app.engine.artifact import TaskArtifact  # noqa: E402
from app.engine.base import load_base  # noqa: E402
from app.engine.fastfood import FastfoodProjection  # noqa: E402
from app.engine.reconstruct import reconstruct  # noqa: E402
from app.engine.subspace import SubspaceConfig, SubspaceModel  # noqa: E402


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds of `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step_fn(model, params, batch, lr):
    opt = torch.optim.AdamW(params, lr=lr)
    device = next(iter(params)).device

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--dims", type=int, nargs="+", default=[1000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()

    torch.manual_seed(0)
    base = load_base(args.model, num_labels=2, seed=0)
    D = base.num_parameters
    dev = torch.device(args.device)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.seq), device=dev),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=dev),
        "labels": torch.randint(0, 2, (args.batch,), device=dev),
    }
    rows: list[dict] = []

    full = copy.deepcopy(base.model).to(dev).train()
    full_s = timed(train_step_fn(full, list(full.parameters()), batch, 3e-5), args.reps)
    rows.append({"what": "full fine-tuning step", "seconds": full_s, "ratio": 1.0})
    del full

    for method in ("said", "did"):
        for dim in args.dims:
            config = SubspaceConfig(method, dim, 0)
            sub = SubspaceModel(copy.deepcopy(base.model), config, device=dev).train()
            params = [p for p in sub.parameters() if p.requires_grad]
            s = timed(train_step_fn(sub, params, batch, 2e-2), args.reps)
            rows.append(
                {"what": f"{method.upper()} step, d={dim}", "seconds": s, "ratio": s / full_s}
            )
            del sub

    flat = torch.randn(D, device=dev)
    copy_s = timed(lambda: flat.clone(), 10)
    rows.append({"what": f"copy D={D} floats (floor)", "seconds": copy_s, "ratio": 1.0})

    dim = args.dims[0]
    sub = SubspaceModel(copy.deepcopy(base.model), SubspaceConfig("said", dim, 0))
    with torch.no_grad():
        sub.theta.normal_()
    task = TaskArtifact(
        model=args.model,
        base_digest=base.digest,
        seed=0,
        method="said",
        dim=dim,
        D=D,
        labels=["0", "1"],
        text_column="sentence",
        text_pair_column=None,
        max_length=args.seq,
        theta=sub.theta,
        lam=sub.lam,
    )
    del sub
    proj = FastfoodProjection(task.theta.numel(), D, 0, device=dev)
    x = task.theta.to(dev)
    p_s = timed(lambda: proj.forward(x), args.reps)
    rows.append({"what": f"projection P(θ), d={dim}", "seconds": p_s, "ratio": p_s / copy_s})

    def rebuild():
        fresh = copy.copy(base)
        fresh.model = copy.deepcopy(base.model)
        return fresh

    bases = [rebuild() for _ in range(args.reps + 1)]
    warm_s = timed(lambda: reconstruct(bases.pop(), task, dev), args.reps)
    rows.append(
        {
            "what": "reconstruct all weights (seed cached)",
            "seconds": warm_s,
            "ratio": warm_s / copy_s,
        }
    )
    gen_s = timed(lambda: FastfoodProjection(task.theta.numel(), D, 12345, device=dev), 3)
    rows.append(
        {
            "what": "generate P for a new seed (cold extra)",
            "seconds": gen_s,
            "ratio": gen_s / copy_s,
        }
    )

    env = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model,
        "D": D,
        "batch": args.batch,
        "seq": args.seq,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    }
    print(json.dumps(env))
    print(f"{'measurement':45s} {'ms':>10s} {'ratio':>8s}")
    for r in rows:
        print(f"{r['what']:45s} {r['seconds'] * 1e3:10.1f} {r['ratio']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
