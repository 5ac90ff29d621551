"""The server against the machine's limit (issue 24): in one run, the raw capacity (the same
base, the same SST-2 dev sentences, batched the way the server batches them, in-process, no
HTTP) and the throughput of `kilotask serve` under load from `wrk` (Debian's; a Lua script
posts one sentence per /v1/infer request), with their ratio, where the server's CPU went (model
calls, tokenizing within them, and the rest: HTTP, JSON, keys, lookups) and how much CPU the
load generator itself used. Loads alternate round by round in one server process: one SAID
task, one lowrank task, and with `--tasks N` Zipf(1.1) traffic over N lowrank tasks
(bulk-imported and pinned first).

    apt-get install wrk
    .venv/bin/python bench/bench_capacity.py --clients 8 32 --seconds 20 --rounds 2 --json out.json
    .venv/bin/python bench/bench_capacity.py --tasks 10000 --clients 32 --json zipf.json
    .venv/bin/python bench/bench_capacity.py --model mpnet-base --spec lowrank-v2 --tasks 1000

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
import random
import re
import resource
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from bench_serving import make_tasks, pin_all, post_all, rss_mb, sentences  # bench/ is on the path
from local_server import local_server

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
local shown = 0
response = function(status, headers, body)
  if status ~= 200 and shown < 5 then  -- what went wrong, for the report
    shown = shown + 1
    io.write("ERROR " .. status .. " " .. string.sub(body, 1, 300) .. "\\n")
  end
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
        "error_samples": re.findall(r"^ERROR (.*)$", out, re.M),
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


def import_batches(url: str, key: str, blobs: list[bytes], chunk: int = 1000) -> list[str]:
    """Bulk-import task files through POST /v1/tasks:batch, `chunk` files a request."""
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        for lo in range(0, len(blobs), chunk):
            files = [("files", (f"t{lo + i}.kt", b)) for i, b in enumerate(blobs[lo : lo + chunk])]
            r = http.post("/v1/tasks:batch", files=files)
            r.raise_for_status()
            ids += [item["task"]["id"] for item in r.json()["data"]]
    return ids


def zipf_bodies(ids: list[str], texts: list[str], n: int, s: float = 1.1) -> list[str]:
    """`n` request bodies, tasks drawn Zipf(s) over `ids` (rank k has weight 1/k^s)."""
    rng = random.Random(0)
    tasks = rng.choices(ids, weights=[1 / (k + 1) ** s for k in range(len(ids))], k=n)
    return [json.dumps({"inputs": [{"task": t, "text": rng.choice(texts)}]}) for t in tasks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--spec", default="lowrank-v1", help="the lowrank tasks' spec")
    ap.add_argument("--tasks", type=int, default=0, help="lowrank tasks for Zipf rounds (0: none)")
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--raw-batch", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    texts = sentences(args.texts)
    blobs = {
        "said": make_tasks(1, "said", args.model)[0],
        "lowrank": make_tasks(1, "lowrank", args.model, args.spec)[0],
    }
    raw = {
        method: {b: raw_capacity(TaskArtifact.from_bytes(blob), texts, args.workers, b)
                 for b in args.raw_batch}
        for method, blob in blobs.items()
    }  # fmt: skip
    print(json.dumps({"raw_sentences_per_s": raw}), flush=True)
    # the same draws as blobs["lowrank"]: the single task is the Zipf set's first (and hottest)
    many = make_tasks(args.tasks, "lowrank", args.model, args.spec) if args.tasks else []

    rounds: list[dict] = []
    facts: dict = {}
    with local_server(KILOTASK_SERVING_WORKERS=str(args.workers)) as server:
        url, key, data = server.url, server.key, server.data
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        ids = dict(zip(blobs, asyncio.run(post_all(url, key, list(blobs.values()))), strict=True))
        bodies = {
            method: [json.dumps({"inputs": [{"task": task, "text": t}]}) for t in texts]
            for method, task in ids.items()
        }
        if many:
            start = time.perf_counter()
            many_ids = import_batches(url, key, many)
            facts["import_s"] = time.perf_counter() - start
            start = time.perf_counter()
            asyncio.run(pin_all(url, key, many_ids, clients=8))
            facts["pin_s"] = time.perf_counter() - start
            bodies["zipf"] = zipf_bodies(many_ids, texts, 30_000)
        scripts = {}
        for load, lines in bodies.items():
            path = data / f"{load}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            scripts[load] = data / f"{load}.lua"
            scripts[load].write_text(LUA % {"bodies": path, "key": key})
        for task in ids.values():
            for t in texts[:64]:  # warm: the task, the tokenizer, the allocator
                http.post("/v1/infer", json={"inputs": [{"task": task, "text": t}]})
        top = max(args.raw_batch)  # the raw reference: the largest batch the server may run
        for clients in args.clients:
            for r in range(args.rounds):
                for load in scripts:  # alternating, in one server process
                    before, cpu = serving_counters(http), cpu_seconds(server.process.pid)
                    got = run_wrk(url, scripts[load], clients, args.seconds)
                    after, used = serving_counters(http), cpu_seconds(server.process.pid) - cpu
                    n = max(1, after["requests_batched"] - before["requests_batched"])
                    if n + got["errors"] < 0.9 * got["requests"]:  # wrk runs plain GETs when its
                        # script fails; refused requests (503) never reach the batcher
                        raise RuntimeError(f"wrk sent {got['requests']} requests, {n} inferred")
                    model = after["model_cpu_s"] - before["model_cpu_s"]
                    tokenize = after["tokenize_s"] - before["tokenize_s"]
                    calls = max(1, after["batches"] - before["batches"])
                    row = {
                        "load": load, "round": r, **got,
                        "raw_rps": raw["said" if load == "said" else "lowrank"][top],
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
        state = http.get("/v1/serving").json()
        facts["lowrank_resident"] = {
            k: state["lowrank"][k] for k in ("resident_tasks", "resident_mb", "mean_task_kb")
        }
        facts["server_rss_mb"] = rss_mb(server.process.pid)
    summary = []
    for clients in args.clients:
        med = {}
        for load in scripts:
            mine = [r for r in rounds if r["clients"] == clients and r["load"] == load]
            keys = ("throughput_rps", "of_raw", "p50_ms", "p99_ms", "errors")
            med[load] = {k: statistics.median(r[k] for r in mine) for k in keys}
        pair = {"clients": clients, **{f"{load}": v for load, v in med.items()},
                "lowrank_over_said": _paired(rounds, clients, "lowrank", "said")}  # fmt: skip
        if "zipf" in med:
            pair["zipf_over_single"] = _paired(rounds, clients, "zipf", "lowrank")
            pair["zipf_p99_over_single_p99"] = med["zipf"]["p99_ms"] / med["lowrank"]["p99_ms"]
        summary.append(pair)
    print(json.dumps({"summary": summary, **facts}))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "raw": raw, "rounds": rounds,
                                               "summary": summary, **facts}, indent=1))  # fmt: skip


def _paired(rounds: list[dict], clients: int, a: str, b: str) -> float:
    """Median over rounds of load a's throughput over load b's in the same round."""
    by = {(r["load"], r["round"]): r["throughput_rps"] for r in rounds if r["clients"] == clients}
    return statistics.median(by[a, k] / by[b, k] for (load, k) in by if load == a)


if __name__ == "__main__":
    main()
