"""Overload (issue 24, admission control): open-loop Poisson arrivals of single-sentence
/v1/infer requests at a sustainable rate and at twice it, against one `kilotask serve`.

    .venv/bin/python bench/bench_overload.py --seconds 20 --json overload.json

First `wrk` (32 connections, closed loop) finds the server's throughput X on one lowrank task;
the sustainable rate is `--load` × X (0.8: a server run at its very limit has no bound on its
queue), the overload rate twice that. Arrivals are open-loop (a request is sent at its time
whether or not earlier ones were answered; each latency counts from that time, so a stalled
server cannot hide its backlog), over as many keep-alive connections as are in flight, from
one asyncio process that writes pre-encoded requests (its CPU is reported). For each rate:
the answered requests' p50/p99, and the refused ones (503 serving_queue_full) with theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
from pathlib import Path

from bench_capacity import LUA, run_wrk  # bench/ is on the path
from bench_serving import make_tasks, post_all, sentences
from local_server import local_server

LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(LENGTH.search(head).group(1)))
    return int(head[9:12]), b"connection: close" not in head.lower()


async def open_loop(port: int, requests: list[bytes], rate: float, seconds: float) -> dict:
    """Send `requests` (cycled) at Poisson times of `rate` a second for `seconds`."""
    loop = asyncio.get_running_loop()
    rng = random.Random(0)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    answers: list[tuple[int, float]] = []  # (status, seconds from the scheduled send)

    async def one(request: bytes, due: float) -> None:
        while idle:  # a kept connection the server may have closed meanwhile (keep-alive)
            conn = idle.pop()
            try:
                conn[1].write(request)
                status, keep = await _answer(conn[0])
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                conn[1].close()
        else:
            conn = await asyncio.open_connection("127.0.0.1", port)
            conn[1].write(request)
            status, keep = await _answer(conn[0])
        answers.append((status, loop.time() - due))
        if keep:
            idle.append(conn)
        else:
            conn[1].close()

    cpu, start = time.process_time(), loop.time()
    due, sent = start, []
    while due - start < seconds:
        due += rng.expovariate(rate)
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        sent.append(asyncio.create_task(one(requests[len(sent) % len(requests)], due)))
    await asyncio.gather(*sent)
    for _, writer in idle:
        writer.close()
    ok = [s for status, s in answers if status == 200]
    refused = [s for status, s in answers if status == 503]
    return {
        "offered_rps": len(answers) / seconds,
        "answered_rps": len(ok) / seconds,
        "answered": len(ok),
        "refused": len(refused),
        "other_errors": len(answers) - len(ok) - len(refused),
        "answered_p50_ms": 1e3 * _quantile(ok, 0.50),
        "answered_p99_ms": 1e3 * _quantile(ok, 0.99),
        "refused_p50_ms": 1e3 * _quantile(refused, 0.50) if refused else None,
        "refused_p99_ms": 1e3 * _quantile(refused, 0.99) if refused else None,
        "generator_cpu_s": time.process_time() - cpu,
    }


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[round(q * 100) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--load", type=float, default=0.8, help="sustainable rate / wrk throughput")
    ap.add_argument("--max-queue", type=int, default=0, help="KILOTASK_SERVING_MAX_QUEUE")
    ap.add_argument("--json")
    args = ap.parse_args()
    texts = sentences(512)
    env = {"KILOTASK_SERVING_MAX_QUEUE": str(args.max_queue)}
    with local_server(**env) as server:
        [task] = asyncio.run(post_all(server.url, server.key, make_tasks(1, "lowrank")))
        bodies = [json.dumps({"inputs": [{"task": task, "text": t}]}) for t in texts]
        path = server.data / "bodies.jsonl"
        path.write_text("\n".join(bodies) + "\n")
        script = server.data / "load.lua"
        script.write_text(LUA % {"bodies": path, "key": server.key})
        run_wrk(server.url, script, 32, 5)  # warm
        closed = run_wrk(server.url, script, 32, args.seconds)
        requests = [
            (
                f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                f"{server.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
            ).encode()
            for body in bodies
        ]
        sustainable = args.load * closed["throughput_rps"]
        rates = {"sustainable": sustainable, "twice": 2 * sustainable}
        results = {}
        for name, rate in rates.items():
            results[name] = asyncio.run(open_loop(server.port, requests, rate, args.seconds))
            print(json.dumps({name: results[name]}), flush=True)
    report = {
        "closed_loop_32_clients": closed,
        "sustainable_rps": sustainable,
        **results,
        "answered_p99_ratio": results["twice"]["answered_p99_ms"]
        / results["sustainable"]["answered_p99_ms"],
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **report}, indent=1))


if __name__ == "__main__":
    main()
