"""Serving load test on loopback: one task vs mixed Zipf traffic over many tasks.

Usage: python bench/bench_serving.py [--method said|lowrank] [--tasks 100] [--requests 400]
       [--clients 8 [32 ...]] [--cache-mb 10240] [--no-warm] [--json FILE]
Starts `kilotask serve --no-worker` on a free loopback port (SQLite, temporary data folder),
imports N random d=1000 tasks of --method for MiniLM-L6 (SAID, or lowrank with its default
rank and targets), warms them (unless --no-warm), then for each --clients count sends a fixed
number of single-text requests: all to one task, then Zipf(1.1)-distributed over all tasks,
alternating for --rounds rounds (medians reported). Reports throughput, p50/p99 latency,
errors, cold vs warm latency, cache stats, the server's RSS (after loading the base, and at the
end), and in-process rebuild times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

import httpx
import torch
from local_server import local_server  # bench/ is on the path

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.engine.lowrank import LowRankConfig, LowRankModel
from app.serving.cache import TaskCache
from app.serving.lowrank_pool import LowRankPool

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))


def sentences(n: int) -> list[str]:
    lines = (GLUE / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines][:n]


def make_tasks(
    n: int,
    method: str = "said",
    model_id: str = "minilm-l6",
    spec: str = "lowrank-v1",
    seed: int = 0,
) -> list[bytes]:
    """Random d=1000 tasks: SAID, or lowrank (`spec`) with the default rank and targets. θ is
    scaled so that the tasks' predictions differ from each other as trained ones do; `seed`
    draws them (the same seed, the same tasks)."""
    base = load_base(model_id, 2, 0)
    gen = torch.Generator().manual_seed(seed)
    if method == "lowrank":
        model = LowRankModel(base.model, base.seeded, LowRankConfig(dim=1000, spec=spec))
        m, d_proj, scale = model.layout.num_scales, model.d_proj, 2.0
        extra = dict(spec=spec, **model.artifact_fields())
    else:
        m = len(list(base.model.parameters()))
        d_proj, scale, extra = 1000 - m, 30.0, {}
    return [
        TaskArtifact(
            model=model_id,
            base_digest=base.digest,
            seed=0,
            method=method,
            dim=1000,
            D=base.num_parameters,
            labels=["0", "1"],
            text_column="sentence",
            text_pair_column=None,
            max_length=64,
            theta=torch.randn(d_proj, generator=gen) * scale,
            lam=1 + 0.1 * torch.randn(m, generator=gen),
            **extra,
        ).to_bytes()
        for _ in range(n)
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def post_all(url, key, blobs: list[bytes], clients: int = 4) -> list[str]:
    """Import every task file (a few at a time), keeping their order."""
    ids: list[str | None] = [None] * len(blobs)
    queue = list(enumerate(blobs))

    async def client(http):
        while queue:
            i, blob = queue.pop()
            r = await http.post("/v1/tasks", files={"file": ("t.safetensors", blob)})
            r.raise_for_status()
            ids[i] = r.json()["id"]

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return ids


async def pin_all(url, key, ids: list[str], clients: int = 4) -> None:
    queue = list(ids)

    async def client(http):
        while queue:
            (await http.post(f"/v1/tasks/{queue.pop()}/pin")).raise_for_status()

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


async def load(url, key, plan: list[tuple[str, str]], clients: int) -> dict:
    latencies, errors = [], 0
    queue = list(enumerate(plan))

    async def client(http):
        nonlocal errors
        while queue:
            _, (task, text) = queue.pop()
            start = time.perf_counter()
            r = await http.post("/v1/infer", json={"inputs": [{"task": task, "text": text}]})
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(plan),
        "errors": errors,
        "seconds": wall,
        "throughput_rps": len(plan) / wall,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
    }


def zipf_plan(ids: list[str], texts: list[str], n: int, s: float = 1.1) -> list[tuple[str, str]]:
    rng = random.Random(0)
    weights = [1 / (k + 1) ** s for k in range(len(ids))]
    return [(rng.choices(ids, weights)[0], rng.choice(texts)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["said", "lowrank"], default="said")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, nargs="+", default=[8])
    ap.add_argument("--no-warm", action="store_true", help="do not request every task first")
    ap.add_argument("--cache-mb", type=float, default=10240)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="KILOTASK_SERVING_WORKERS (0: auto)")
    ap.add_argument("--json")
    args = ap.parse_args()

    env = {
        "KILOTASK_SERVING_CACHE_MB": str(args.cache_mb),
        "KILOTASK_SERVING_MAX_WAIT_MS": "5",
        "KILOTASK_SERVING_WORKERS": str(args.workers),
    }
    with local_server(**env) as server:
        url, key = server.url, server.key
        headers = {"Authorization": f"Bearer {key}"}
        start = time.perf_counter()
        ids = asyncio.run(post_all(url, key, make_tasks(args.tasks, args.method)))
        import_s = time.perf_counter() - start
        texts = sentences(200)

        http = httpx.Client(base_url=url, headers=headers, timeout=300)  # one connection

        def one(task: str) -> float:
            start = time.perf_counter()
            body = {"inputs": [{"task": task, "text": texts[0]}]}
            http.post("/v1/infer", json=body).raise_for_status()
            return time.perf_counter() - start

        one(ids[0])  # loads the base model once (not part of a task's cold start)
        rss_base = rss_mb(server.process.pid)
        warm = statistics.median(one(ids[0]) for _ in range(10))
        cold = statistics.median(one(task) for task in ids[1:6])  # first request to a task
        if not args.no_warm:  # make every task resident: the cache is sized to hold them
            if args.method == "lowrank":  # a pin builds the task without a forward pass
                asyncio.run(pin_all(url, key, ids))
            else:
                asyncio.run(load(url, key, [(t, texts[0]) for t in ids], 8))
        rss_warm = rss_mb(server.process.pid)
        single_plan = [(ids[0], t) for t in random.Random(1).choices(texts, k=args.requests)]
        mixed_plan = zipf_plan(ids, texts, args.requests)
        by_clients = {}
        for clients in args.clients:
            rounds = []  # alternate the two loads so that drift in the machine hits both alike
            for _ in range(args.rounds):
                single = asyncio.run(load(url, key, single_plan, clients))
                mixed = asyncio.run(load(url, key, mixed_plan, clients))
                rounds.append({"single_task": single, "mixed_zipf": mixed})
            by_clients[str(clients)] = _summary(rounds)
        serving = httpx.get(url + "/v1/serving", headers=headers).json()
        rss_end = rss_mb(server.process.pid)

    copy_s = statistics.median(_copy_time() for _ in range(5))
    if args.method == "lowrank":
        rebuild = {"rebuild_lowrank_ms": _lowrank_rebuild_ms()}
        resident = {
            "resident_tasks": serving["lowrank"]["resident_tasks"],
            "resident_mb": serving["lowrank"]["resident_mb"],
            "resident_kb_per_task": serving["lowrank"]["mean_task_kb"],
            "mean_reconstruction_ms": serving["lowrank"]["mean_rebuild_ms"],
        }
    else:
        fresh_ms, recycled_ms = _rebuild_times()
        rebuild = {
            "rebuild_into_new_buffer_ms": fresh_ms,
            "rebuild_into_recycled_buffer_ms": recycled_ms,
        }
        resident = {
            "resident_tasks": len(serving["cache"]["resident_tasks"]),
            "resident_mb": serving["cache"]["resident_mb"],
            "mean_reconstruction_ms": serving["cache"]["mean_rebuild_ms"],
        }
    first = by_clients[str(args.clients[0])]
    report = {
        "method": args.method,
        "tasks": args.tasks,
        "clients": args.clients,
        "cache_mb": args.cache_mb,
        "import_seconds": import_s,
        "cold_request_ms": cold * 1e3,
        "warm_request_ms": warm * 1e3,
        "copy_D_floats_ms": copy_s * 1e3,
        "by_clients": by_clients,
        "mixed_over_single_throughput": first["mixed_over_single_throughput"],
        "server_rss_mb": {"base_loaded": rss_base, "after_warm": rss_warm, "end": rss_end},
        "server_rss_growth_mb": rss_end - rss_base,
        **rebuild,
        **resident,
        "mean_batch_size": serving["mean_batch_size"],
        "workers": serving["workers"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _summary(rounds: list[dict]) -> dict:
    single = _median_load([r["single_task"] for r in rounds])
    mixed = _median_load([r["mixed_zipf"] for r in rounds])
    return {
        "rounds": rounds,
        "single_task": single,
        "mixed_zipf": mixed,
        "mixed_over_single_throughput": statistics.median(
            r["mixed_zipf"]["throughput_rps"] / r["single_task"]["throughput_rps"] for r in rounds
        ),
        "mixed_p99_over_single_p99": mixed["p99_ms"] / single["p99_ms"],
        "errors": sum(r[k]["errors"] for r in rounds for k in r),
    }


def _lowrank_rebuild_ms(n: int = 20) -> float:
    """Median ms to rebuild a lowrank task from θ_d in this process (projection + head)."""
    tasks = [TaskArtifact.from_bytes(b) for b in make_tasks(n + 1, "lowrank")]
    base = load_base("minilm-l6", 2, 0)
    pool = LowRankPool(1024, lambda _: base)
    pool.factors(tasks[0])  # the seed's A and projection state: not a rebuild
    times = []
    for task in tasks[1:]:
        start = time.perf_counter()
        pool.factors(task)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _median_load(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _rebuild_times(n: int = 6) -> tuple[float, float]:
    """Median ms to rebuild a task in this process: into a new buffer (the cache has room) and
    into an evicted task's buffer (a full cache churning)."""
    tasks = [TaskArtifact.from_bytes(b) for b in make_tasks(n)]
    out = []
    for budget_mb in (n * 100, 100):  # room for all; room for one (each miss recycles)
        cache = TaskCache(budget_mb)
        cache.get(tasks[0])  # loads the base and the seed's projection: not a rebuild
        times = []
        for task in tasks[1:]:
            start = time.perf_counter()
            cache.get(task)
            times.append(time.perf_counter() - start)
        out.append(1e3 * statistics.median(times))
    return out[0], out[1]


def _copy_time() -> float:
    x = torch.randn(22_713_986)
    x.clone()
    start = time.perf_counter()
    x.clone()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
