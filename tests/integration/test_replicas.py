"""Beyond one process (issue 25): on loopback, a private PostgreSQL, a private Redis, two API
replicas (`uvicorn app.main:app`, each on its own port), two Celery workers, and Debian's HAProxy
in front, configured by deploy/haproxy.cfg with this test's server lines. Every process is the
test's own and is stopped at the end; the machine's shared services are never used."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.services import (
    REPO,
    PostgresCluster,
    RedisServer,
    _wait_port,
    free_port,
    start_worker,
    worker_env,
)
from tests.integration.test_jobs_api import make_task_bytes
from tests.integration.test_worker_e2e import upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_ACTIVE_JOBS = 3


def haproxy_config(port: int, replicas: list[int], stats: Path) -> str:
    """deploy/haproxy.cfg with this test's frontend port and replicas instead of Docker's."""
    text = (REPO / "deploy" / "haproxy.cfg").read_text()
    text = text.replace("bind :8000", f"bind 127.0.0.1:{port}")
    servers = "\n".join(f"    server api{i} 127.0.0.1:{p} check" for i, p in enumerate(replicas))
    text = re.sub(r"    server-template api .*\n", servers + "\n", text)
    text = text[: text.index("resolvers docker")]
    return text.replace("global\n", f"global\n    stats socket {stats} level admin\n", 1)


def server_state(stats: Path) -> dict[str, str]:
    """Each replica's state as HAProxy sees it (UP, DOWN, ...), from its stats socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    rows = [line.split(",") for line in out.decode().splitlines() if line.startswith("api,")]
    return {row[1]: row[17] for row in rows if row[1].startswith("api")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_bert):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (scripts/setup.sh installs it)", pytrace=False)
    from app.db.migrate import upgrade

    tmp = tmp_path_factory.mktemp("replicas")
    pg = PostgresCluster().init()
    redis = RedisServer(tmp / "redis").start()
    procs: list[subprocess.Popen] = []
    log = open(tmp / "processes.log", "ab")  # noqa: SIM115 (closed at the end)
    try:
        upgrade(pg.url)
        (tmp / "data").mkdir()  # shared by the replicas and workers, as a volume would be
        env = worker_env(tmp / "data", pg.url, redis.url, replica_sync_s="0.5",
                         tenant_max_active_jobs=str(MAX_ACTIVE_JOBS))  # fmt: skip
        ports = [free_port(), free_port()]
        api = {}
        for port in ports:
            api[port] = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=REPO, env=env, stdout=log, stderr=log,
            )  # fmt: skip
            procs.append(api[port])
        procs += [start_worker(env, log), start_worker(env, log)]
        lb_port, stats = free_port(), tmp / "haproxy.sock"
        (tmp / "haproxy.cfg").write_text(haproxy_config(lb_port, ports, stats))
        procs.append(subprocess.Popen(["haproxy", "-f", str(tmp / "haproxy.cfg")],
                                      stdout=log, stderr=log))  # fmt: skip
        for port in [*ports, lb_port]:
            _wait_port(port, up=True, timeout=60)
        from app.config import Settings
        from app.db.session import session_factory
        from app.records.keys import create_key

        with session_factory(Settings(database_url=pg.url))() as session:
            _, key = create_key(session, "acme")
        deadline = time.monotonic() + 30
        while set(server_state(stats).values()) != {"UP"}:
            assert time.monotonic() < deadline, server_state(stats)
            time.sleep(0.2)
        yield {
            "lb": f"http://127.0.0.1:{lb_port}",
            "replicas": [f"http://127.0.0.1:{p}" for p in ports],
            "api": api,
            "stats": stats,
            "auth": {"Authorization": f"Bearer {key}"},
            "tmp": tmp,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
        redis.stop()
        from app.config import Settings
        from app.db.session import get_engine

        get_engine(Settings(database_url=pg.url)).dispose()
        pg.remove()


def _import(url: str, auth: dict, blobs: list[bytes]) -> list[str]:
    files = [("files", (f"t{i}.kt", b)) for i, b in enumerate(blobs)]
    r = httpx.post(url + "/v1/tasks:batch", files=files, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    return [item["task"]["id"] for item in r.json()["data"]]


def _infer(url: str, auth: dict, task: str, timeout: float = 30) -> int:
    body = {"inputs": [{"task": task, "text": "a fine film"}]}
    return httpx.post(url + "/v1/infer", json=body, headers=auth, timeout=timeout).status_code


def test_a_delete_through_one_replica_is_a_404_on_the_other_within_2_s(cluster, tiny_bert):
    a, b = cluster["replicas"]
    auth = cluster["auth"]
    [task] = _import(cluster["lb"], auth, [make_task_bytes(tiny_bert, seed=11)])
    assert _infer(a, auth, task) == 200 and _infer(b, auth, task) == 200  # both serve it
    assert httpx.delete(f"{a}/v1/tasks/{task}", headers=auth).status_code == 204
    deleted = time.monotonic()
    while (status := _infer(b, auth, task)) == 200:
        assert time.monotonic() - deleted < 2, "replica B still serves a task deleted via A"
        time.sleep(0.05)
    assert status == 404


def test_a_killed_replica_is_taken_out_and_no_inference_fails(cluster, tiny_bert):
    """Four clients send /v1/infer through HAProxy; one replica gets SIGKILL: HAProxy marks
    it down within 3 s, and every request is answered 200 but those in flight on the dead
    replica that HAProxy could not resend (seen: 0 to 3 of about 2,400, as a broken
    connection; the count is printed)."""
    lb, auth, stats = cluster["lb"], cluster["auth"], cluster["stats"]
    tasks = _import(lb, auth, [make_task_bytes(tiny_bert, seed=k) for k in range(1, 5)])
    stop = time.monotonic() + 8
    statuses: list[int] = []
    failures: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=lb, headers=auth, timeout=30) as http:
            while time.monotonic() < stop:
                body = {"inputs": [{"task": tasks[k], "text": f"text {time.monotonic()}"}]}
                try:
                    statuses.append(http.post("/v1/infer", json=body).status_code)
                except httpx.HTTPError as exc:  # the connection itself failed
                    statuses.append(-1)
                    failures.append(f"{type(exc).__name__}: {exc}")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, k) for k in range(4)]
        time.sleep(3)
        victim = cluster["api"][int(cluster["replicas"][1].rsplit(":", 1)[1])]
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        while server_state(stats).get("api1") == "UP":
            time.sleep(0.05)
        out_after = time.monotonic() - killed
        for future in running:
            future.result()
    print(f"replica out after {out_after:.2f} s; {len(statuses)} requests, "
          f"{sum(s != 200 for s in statuses)} not answered 200: {failures}")  # fmt: skip
    assert out_after < 3
    # at most the requests in flight on the killed replica (one per client) may fail, and only
    # as a broken connection: HAProxy resends the others, never answers them with an error
    assert len(statuses) > 20 and set(statuses) <= {200, -1}, sorted(set(statuses))
    assert statuses.count(-1) <= 4, failures
    assert _infer(lb, auth, tasks[0]) == 200  # the other replica serves everything


def test_jobs_run_once_and_the_active_job_limit_holds_across_replicas(cluster, tiny_bert, tmp_path):
    """20 job submissions at once, split between the replicas that are up: exactly the
    tenant's limit is accepted (counted in PostgreSQL, not in one process), the rest are 429,
    and each accepted job runs once on one of the two workers."""
    urls = [u for u in cluster["replicas"] if _alive(u)] or [cluster["lb"]]
    auth = cluster["auth"]
    with httpx.Client(base_url=cluster["lb"], timeout=60) as lb:
        ds = upload(lb, auth, tmp_path, 64)

    def submit(k: int) -> int:
        body = {"model": str(tiny_bert), "train_dataset": ds, "method": "said", "dim": 50,
                "seed": k, "hyperparameters": {"batch_size": 16, "max_length": 16,
                                               "max_steps": 8, "learning_rate": 0.1}}  # fmt: skip
        url = urls[k % len(urls)]
        r = httpx.post(url + "/v1/jobs", json=body, headers=auth, timeout=60)
        return r.status_code, (r.json().get("id") if r.status_code == 202 else None)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(submit, range(20)))
    accepted = [job for status, job in results if status == 202]
    assert sorted(status for status, _ in results) == [202] * MAX_ACTIVE_JOBS + [429] * (
        20 - MAX_ACTIVE_JOBS
    ), results
    with httpx.Client(base_url=cluster["lb"], timeout=60) as lb:
        for job in accepted:
            done = wait_for(lb, auth, job, lambda j: j["status"] in ("succeeded", "failed"))
            assert done["status"] == "succeeded", done
            events = lb.get(f"/v1/jobs/{job}/events", headers=auth).json()["data"]
            running = [e for e in events if e["type"] == "status"
                       and e["data"].get("status") == "running"]  # fmt: skip
            assert len(running) == 1, events  # ran once, on one worker


def _alive(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
