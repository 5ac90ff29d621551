"""Fault tests with real services that the tests start themselves on free loopback ports: a
worker killed with SIGKILL, a Redis restart without persistence, PostgreSQL stopped for 20 s
during a job. Each prints the measured recovery time (`pytest -s` shows it; the README's
"Reliability" section quotes it)."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.migrate import upgrade
from app.db.models import JobEvent, Task
from app.db.session import get_engine
from app.main import create_app
from tests.integration.conftest import new_key
from tests.integration.services import (
    PostgresCluster,
    RedisServer,
    fresh_database,
    start_worker,
    worker_env,
)
from tests.integration.test_worker_e2e import submit, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture()
def workers(tmp_path):
    """Start real worker processes; every one is killed at the end of the test."""
    procs = []
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 (closed after the workers stop)

    def start(env: dict):
        procs.append(start_worker(env, log))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture()
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture()
def shared_db(tmp_path):
    """A database of this test's own (PostgreSQL in CI): the workers' sweepers act on every
    job they see, and other tests leave queued and running jobs behind."""
    with fresh_database(tmp_path) as url:
        yield url


def _events(settings: Settings, job_id: str) -> list[JobEvent]:
    with Session(get_engine(settings)) as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.scalars(query))


def _tasks_of(settings: Settings, job_id: str) -> int:
    with Session(get_engine(settings)) as session:
        return session.scalar(select(func.count()).where(Task.job_id == job_id))


def _running_events(settings: Settings, job_id: str) -> list[JobEvent]:
    return [
        e for e in _events(settings, job_id)
        if e.type == "status" and e.data.get("status") == "running"
    ]  # fmt: skip


def test_killed_worker_resumes_within_two_minutes_on_default_timeouts(
    shared_db, redis_server, workers, tiny_bert, tmp_path
):
    """Default lease, sweep and visibility timeout (12 h): a survivor's sweeper requeues the
    dead worker's job, which resumes from its checkpoint and stores exactly one task."""
    settings = Settings(data_dir=tmp_path, database_url=shared_db, broker_url=redis_server.url,
                        checkpoint_every=5)  # fmt: skip
    env = worker_env(tmp_path, shared_db, redis_server.url, checkpoint_every=5)
    client, auth = TestClient(create_app(settings)), new_key(settings)
    ds = upload(client, auth, tmp_path, 256)
    first = workers(env)
    job = submit(client, auth, str(tiny_bert), ds, "kill", max_steps=2000, eval_every=1000,
                 learning_rate=0.3)  # fmt: skip
    wait_for(client, auth, job["id"], lambda j: j["progress"]["step"] >= 40, timeout=120)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    workers(env)
    wait_for(client, auth, job["id"], lambda j: j["attempts"] == 2, timeout=150)
    resumed_s = time.monotonic() - killed_at
    print(f"\nFAULT worker SIGKILL: job resumed by another worker in {resumed_s:.1f} s")
    assert resumed_s < 120
    done = wait_for(client, auth, job["id"], lambda j: j["status"] in FINAL, timeout=300)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    resumed = [e.data for e in _running_events(settings, job["id"])]
    assert [e["attempt"] for e in resumed] == [1, 2] and resumed[1]["resumed_from_step"] >= 5
    messages = [e.data.get("message", "") for e in _events(settings, job["id"])]
    assert any(m.startswith("requeued: its worker") for m in messages)
    assert _tasks_of(settings, job["id"]) == 1


def test_redis_restart_loses_no_job_and_runs_none_twice(
    shared_db, redis_server, workers, tiny_bert, tmp_path
):
    """One job running, one queued; Redis restarts without persistence (the queued message is
    gone). The running job finishes; the sweeper sends the queued one again. Each runs once.
    requeue_queued_after_s is 5 s here (default 60) to keep the test short."""
    fast = {"requeue_queued_after_s": 5, "sweep_every_s": 2}
    settings = Settings(data_dir=tmp_path, database_url=shared_db, broker_url=redis_server.url,
                        **fast)  # fmt: skip
    env = worker_env(tmp_path, shared_db, redis_server.url, **fast)
    client, auth = TestClient(create_app(settings)), new_key(settings)
    ds = upload(client, auth, tmp_path, 256)
    workers(env)
    running = submit(client, auth, str(tiny_bert), ds, "running", max_steps=1500,
                     eval_every=1500, learning_rate=0.3)  # fmt: skip
    wait_for(client, auth, running["id"], lambda j: j["progress"]["step"] >= 20, timeout=120)
    queued = submit(client, auth, str(tiny_bert), ds, "queued", max_steps=100, eval_every=100,
                    learning_rate=0.3)  # fmt: skip
    assert client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()["status"] == "queued"
    redis_server.stop()
    redis_server.start()
    restarted_at = time.monotonic()
    for job in (running, queued):
        done = wait_for(client, auth, job["id"], lambda j: j["status"] in FINAL, timeout=300)
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert len(_running_events(settings, job["id"])) == 1  # claimed exactly once
        assert _tasks_of(settings, job["id"]) == 1
    started = _running_events(settings, queued["id"])[0].created_at
    finished = [e for e in _events(settings, running["id"]) if e.data.get("status") == "succeeded"]
    assert _utc(started) >= _utc(finished[0].created_at)  # one worker: one after the other
    print(f"\nFAULT Redis restart: both jobs done {time.monotonic() - restarted_at:.1f} s after")


def test_postgres_stopped_for_20_s_during_a_job(redis_server, workers, tiny_bert, tmp_path):
    """The API answers 503 in the error envelope at once; the worker keeps training, keeps
    its progress in memory, retries its writes with backoff and finishes; nothing is lost."""
    pg = PostgresCluster().init()
    try:
        upgrade(pg.url)
        settings = Settings(data_dir=tmp_path, database_url=pg.url, broker_url=redis_server.url)
        env = worker_env(tmp_path, pg.url, redis_server.url)
        client, auth = TestClient(create_app(settings)), new_key(settings)
        ds = upload(client, auth, tmp_path, 256)
        workers(env)
        job = submit(client, auth, str(tiny_bert), ds, "pg", max_steps=3000, eval_every=1500,
                     learning_rate=0.3)  # fmt: skip
        wait_for(client, auth, job["id"], lambda j: j["progress"]["step"] >= 20, timeout=120)
        pg.stop()
        stopped = datetime.now().astimezone()
        asked = time.monotonic()
        r = client.get(f"/v1/jobs/{job['id']}", headers=auth)
        answered_s = time.monotonic() - asked
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable" and r.headers["retry-after"]
        assert answered_s < 10
        assert client.get("/healthz").status_code == 503
        time.sleep(max(0.0, 20 - (datetime.now().astimezone() - stopped).total_seconds()))
        pg.start()
        back = datetime.now().astimezone()
        back_at = time.monotonic()
        done = wait_for(client, auth, job["id"], lambda j: j["status"] in FINAL, timeout=300)
        after_s = time.monotonic() - back_at
        print(f"\nFAULT PostgreSQL down 20 s: API answered 503 in {answered_s:.2f} s; job "
              f"{done['status']} {after_s:.1f} s after it came back")  # fmt: skip
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert done["progress"] == {"step": 3000, "total": 3000}
        assert _tasks_of(settings, job["id"]) == 1
        progress = [e for e in _events(settings, job["id"]) if e.type == "progress"]
        steps = [e.data["step"] for e in progress]
        assert steps == sorted(steps) and steps[-1] == 3000
        during = [e for e in progress if stopped <= _utc(e.created_at) <= back]
        assert during, "progress made during the outage was written once it ended"
    finally:
        pg.remove()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
