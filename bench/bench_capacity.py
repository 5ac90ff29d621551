"""The server against the machine's limit (issue 24): in one run, the raw capacity (the same
base, the same SST-2 dev sentences, batched the way the server batches them, in-process, no
HTTP) and the throughput of `kilotask serve` under load from `wrk` (Debian's; a Lua script
posts one sentence per /v1/infer request), with their ratio, where the server's CPU went (model
calls, tokenizing within them, and the rest: HTTP, JSON, keys, lookups) and how much CPU the
load generator itself used. SAID and lowrank rounds alternate in one server process.

    apt-get install wrk
    .venv/bin/python bench/bench_capacity.py --clients 8 32 --seconds 20 --rounds 2 --json out.json

Raw capacity is measured in this process, before the server starts (so the two never share the
cores): `--workers` threads of one intra-op thread each (what the server runs on CPU), each
scoring batches of `--raw-batch` sentences in arrival order, through the code the server's
workers call (TaskCache + classify for SAID, LowRankPool + classify_mixed for lowrank).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from bench_serving import make_tasks, post_all, sentences  # bench/ is on the path

from app.engine.artifact import TaskArtifact
from app.serving.cache import TaskCache, classify
from app.serving.lowrank_pool import LowRankPool, classify_mixed

ROOT = Path(__file__).resolve().parents[1]
LUA = """
local bodies, i = {}, 0
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/v1/infer", nil, bodies[i])
end
"""


def raw_capacity(task: TaskArtifact, texts: list[str], workers: int, batch: int) -> float:
    """Sentences per second the server's own scoring code reaches on these texts, with the
    server's worker threads, no HTTP and no queue."""
    lowrank = task.method == "lowrank"
    cache = TaskCache(budget_mb=1024)
    pool = LowRankPool(256, cache.base_model)
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]

    def score(chunk: list[str]) -> None:
        if lowrank:
            classify_mixed(pool, [task] * len(chunk), [(t, None) for t in chunk])
        else:
            with cache.use(task) as entry:
                classify(entry, task, chunk, None)

    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as ex:
        list(ex.map(score, batches[:2]))  # warm: rebuild, first calls
        start = time.perf_counter()
        list(ex.map(score, batches * 3))
        return 3 * len(texts) / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, clients: int, seconds: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "clients": clients,
        "requests": total,
        "throughput_rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": (int(bad.group(1)) if bad else 0)
        + (sum(map(int, errors.groups())) if errors else 0),
        "wrk_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def serving_counters(http: httpx.Client) -> dict:
    state = http.get("/v1/serving").json()
    keys = ("model_cpu_s", "tokenize_s", "queue_wait_s", "requests_batched", "batches")
    return {k: state[k] for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--raw-batch", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    texts = sentences(args.texts)
    blobs = {"said": make_tasks(1, "said")[0], "lowrank": make_tasks(1, "lowrank")[0]}
    raw = {
        method: {b: raw_capacity(TaskArtifact.from_bytes(blob), texts, args.workers, b)
                 for b in args.raw_batch}
        for method, blob in blobs.items()
    }  # fmt: skip
    print(json.dumps({"raw_sentences_per_s": raw}), flush=True)

    data = Path(tempfile.mkdtemp(prefix="kilotask-capacity-"))
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1",
               KILOTASK_SERVING_WORKERS=str(args.workers))  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    rounds: list[dict] = []
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        key = (data / "api_key").read_text().strip()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        ids = dict(zip(blobs, asyncio.run(post_all(url, key, list(blobs.values()))), strict=True))
        scripts = {}
        for method, task in ids.items():
            bodies = data / f"{method}.jsonl"
            lines = [json.dumps({"inputs": [{"task": task, "text": t}]}) for t in texts]
            bodies.write_text("\n".join(lines) + "\n")
            scripts[method] = data / f"{method}.lua"
            scripts[method].write_text(LUA % {"bodies": bodies, "key": key})
            for t in texts[:64]:  # warm: the task, the tokenizer, the allocator
                http.post("/v1/infer", json={"inputs": [{"task": task, "text": t}]})
        for clients in args.clients:
            for r in range(args.rounds):
                for method in ("said", "lowrank"):  # alternating, in one server process
                    before, cpu = serving_counters(http), cpu_seconds(server.pid)
                    got = run_wrk(url, scripts[method], clients, args.seconds)
                    after, used = serving_counters(http), cpu_seconds(server.pid) - cpu
                    n = max(1, after["requests_batched"] - before["requests_batched"])
                    model = after["model_cpu_s"] - before["model_cpu_s"]
                    tokenize = after["tokenize_s"] - before["tokenize_s"]
                    calls = max(1, after["batches"] - before["batches"])
                    row = {
                        "method": method, "round": r, **got,
                        "raw_rps": raw[method][max(args.raw_batch)],
                        "server_cpu_ms_per_request": 1e3 * used / n,
                        "model_ms_per_request": 1e3 * (model - tokenize) / n,
                        "tokenize_ms_per_request": 1e3 * tokenize / n,
                        "rest_ms_per_request": 1e3 * (used - model) / n,
                        "queue_wait_ms_mean": 1e3 * (after["queue_wait_s"]
                                                     - before["queue_wait_s"]) / n,
                        "mean_batch": n / calls,
                    }  # fmt: skip
                    row["of_raw"] = row["throughput_rps"] / row["raw_rps"]
                    rounds.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    summary = []
    for clients in args.clients:
        for method in ("said", "lowrank"):
            mine = [r for r in rounds if r["clients"] == clients and r["method"] == method]
            summary.append({
                "clients": clients, "method": method,
                "throughput_rps": statistics.median(r["throughput_rps"] for r in mine),
                "of_raw": statistics.median(r["of_raw"] for r in mine),
                "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            })  # fmt: skip
    print(json.dumps({"summary": summary}))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "raw": raw, "rounds": rounds,
                                               "summary": summary}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
