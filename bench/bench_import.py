"""Bulk import and listing at scale (issue 25): N MiniLM-L6 lowrank task files imported with
`kilotask import DIR --server URL` (POST /v1/tasks:batch, `--chunk` files a request) into a
server on PostgreSQL, then `GET /v1/tasks` paged by key (`after=`) and, for comparison, by
deep `offset`, one tenant holding all N rows.

    .venv/bin/python bench/bench_import.py --tasks 100000 --json import.json

The database is a fresh one on the PostgreSQL at --postgres (created and dropped here).
Generating the files is timed apart from importing them. Pages are timed right after the
import (PostgreSQL's statistics of the table still stale) and after `ANALYZE task` (what
autovacuum does on its own within minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from bench_serving import make_tasks  # bench/ is on the path
from local_server import ROOT, local_server
from sqlalchemy import create_engine, text


def pages(http: httpx.Client, n: int, **params) -> list[float]:
    """Seconds per GET /v1/tasks page, following next_after from the newest row."""
    times, after = [], None
    for _ in range(n):
        query = {"limit": 100, **params, **({"after": after} if after else {})}
        start = time.perf_counter()
        r = http.get("/v1/tasks", params=query)
        times.append(time.perf_counter() - start)
        r.raise_for_status()
        after = r.json()["next_after"]
    return times


def quantiles(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": 1e3 * q[49], "p99_ms": 1e3 * q[98], "n": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--json")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="kilotask-import-"))
    start = time.perf_counter()
    for lo in range(0, args.tasks, 10_000):  # make_tasks draws the same θ each call: reseed
        for i, blob in enumerate(make_tasks(min(10_000, args.tasks - lo), "lowrank", seed=lo)):
            (folder / f"t{lo + i:06d}.safetensors").write_bytes(blob)
    generate_s = time.perf_counter() - start

    name = f"kilotask_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{args.postgres.rsplit('/', 1)[0]}/{name}"
    try:
        with local_server(KILOTASK_DATABASE_URL=url) as server:
            env = dict(os.environ, KILOTASK_API_KEY=server.key)
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "app.cli", "import", str(folder), "--server",
                 server.url, "--chunk", str(args.chunk), "--quiet"],
                env=env, cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            import_s = time.perf_counter() - start
            totals = json.loads(out.stdout.strip().splitlines()[-1])
            headers = {"Authorization": f"Bearer {server.key}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                pages(http, 20)  # warm
                fresh = quantiles(pages(http, args.pages))  # the table's stats are stale now
                with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
                    conn.execute(text("ANALYZE task"))  # what autovacuum does within minutes
                keyset = quantiles(pages(http, args.pages))
                offsets = []
                for k in range(30):  # deep pages by position, for comparison
                    offset = (args.tasks - 200) * k // 30
                    start = time.perf_counter()
                    deep = http.get("/v1/tasks", params={"limit": 100, "offset": offset})
                    deep.raise_for_status()
                    offsets.append(time.perf_counter() - start)
                total = http.get("/v1/tasks", params={"limit": 1}).json()["total"]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    report = {
        "tasks": args.tasks,
        "generate_s": generate_s,
        "import_s": import_s,
        "import_files_per_s": args.tasks / import_s,
        "import_totals": totals,
        "rows_listed_total": total,
        "keyset_pages_right_after_import": fresh,
        "keyset_pages": keyset,
        "offset_pages": quantiles(offsets),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **report}, indent=1))


if __name__ == "__main__":
    main()
