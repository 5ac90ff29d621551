"""`kilotask serve` on embedded defaults (SQLite, folder broker) supervises its worker: kill -9
the worker mid-job, and serve reaps it, restarts it, and the job resumes from its checkpoint.
Plus the supervisor on its own, with short-lived commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.jobs.supervisor import WorkerSupervisor
from tests.factories import sentiment_rows, write_tsv
from tests.integration.services import free_port

KILOTASK = str(Path(sys.executable).parent / "kilotask")


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_the_supervisor_reaps_restarts_and_reports_a_dying_worker():
    exits: list[int] = []
    sup = WorkerSupervisor([sys.executable, "-c", "import time; time.sleep(0.3)"], exits.append)
    sup.start()
    try:
        _wait(lambda: sup.restarts >= 2, 15, "two restarts")
        assert len(exits) >= 2 and all(isinstance(pid, int) for pid in exits)
        for pid in exits:  # reaped: no zombie is left behind
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        assert sup.status()["state"] in ("up", "restarting")
    finally:
        sup.stop()
    assert sup.status()["state"] == "stopped"


def test_a_worker_that_cannot_start_is_reported_down_after_the_grace(settings):
    from fastapi.testclient import TestClient

    from app.jobs import supervisor
    from app.main import create_app

    sup = WorkerSupervisor(["/nonexistent/kilotask-worker"]).start()
    supervisor.install(sup)
    try:
        client = TestClient(create_app(settings.model_copy(update={"worker_down_grace_s": 0.5})))
        time.sleep(0.7)
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["worker"]["state"] == "down", r.text
        assert r.json()["status"] == "error"
    finally:
        supervisor.install(None)
        sup.stop()


def _call(url: str, key: str, path: str, body: dict | None = None, form: tuple | None = None):
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        name, content = form
        boundary = "kilotaskboundary"
        data = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\n\r\n').encode() + content + (
                f"\r\n--{boundary}--\r\n").encode()  # fmt: skip
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


@pytest.mark.integration
@pytest.mark.slow
def test_serve_restarts_a_killed_worker_and_the_job_resumes(tiny_bert, tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1",
               KILOTASK_CHECKPOINT_EVERY="5")  # fmt: skip
    for name in ("KILOTASK_DATABASE_URL", "KILOTASK_BROKER_URL"):
        env.pop(name, None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    serve = subprocess.Popen([KILOTASK, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                             stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _health_or_none(url), 60, "serve answering")
        key = (data / "api_key").read_text().strip()
        _wait(lambda: _health(url).get("worker", {}).get("state") == "up", 30, "worker up")
        rows = write_tsv(tmp_path / "train.tsv", sentiment_rows(256, seed=0)).read_bytes()
        ds = _call(url, key, "/v1/datasets", form=("train.tsv", rows))["id"]
        body = {"model": str(tiny_bert), "train_dataset": ds, "eval_dataset": ds,
                "method": "said", "dim": 150, "seed": 3,
                "hyperparameters": {"batch_size": 16, "max_length": 16, "max_steps": 600,
                                    "eval_every": 600, "learning_rate": 0.3}}  # fmt: skip
        job_id = _call(url, key, "/v1/jobs", body)["id"]
        _wait(lambda: _call(url, key, f"/v1/jobs/{job_id}")["progress"]["step"] >= 30, 120,
              "job at step 30")  # fmt: skip
        health = _health(url)
        pid = health["worker"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: _call(url, key, f"/v1/jobs/{job_id}")["attempts"] == 2, 120, "resumed")
        resumed_s = time.monotonic() - killed
        print(f"\nFAULT serve's worker SIGKILL: restarted and job resumed in {resumed_s:.1f} s")
        after = _health(url)
        assert after["worker"]["restarts"] >= 1 and after["worker"]["pid"] != pid
        assert not Path(f"/proc/{pid}").exists()  # reaped by serve: not even a zombie is left
        done = _wait(lambda: _finished(url, key, job_id), 300, "job finished")
        assert done["status"] == "succeeded", done
        events = _call(url, key, f"/v1/jobs/{job_id}/events?limit=1000")["data"]
        starts = [e["data"] for e in events if e["data"].get("status") == "running"]
        assert [s["attempt"] for s in starts] == [1, 2] and starts[1]["resumed_from_step"] >= 5
        assert not (tmp_path / "control").exists()  # the folder broker keeps to the data folder
        assert (data / "broker" / "control").is_dir()
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        log.close()


def _health_or_none(url: str) -> dict | None:
    try:
        return _health(url)
    except OSError:
        return None


def _finished(url: str, key: str, job_id: str) -> dict | None:
    job = _call(url, key, f"/v1/jobs/{job_id}")
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_hands_the_job_back_and_a_restarted_serve_resumes_it(tiny_bert, tmp_path):
    """SIGTERM left the worker running, orphaned, still training and holding the lease; each
    restart spent one of KILOTASK_MAX_WORKER_LOSSES, and the resume event named the latest
    progress step, not the checkpoint's. Now serve stops its worker, which checkpoints and
    hands the job back; a new serve resumes it from that step, as attempt 1 again."""
    data = tmp_path / "data"
    env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1",
               KILOTASK_CHECKPOINT_EVERY="1000")  # fmt: skip
    for name in ("KILOTASK_DATABASE_URL", "KILOTASK_BROKER_URL"):
        env.pop(name, None)

    def start(log_name: str):
        port = free_port()
        log = open(tmp_path / log_name, "wb")  # noqa: SIM115 (closed by the caller)
        proc = subprocess.Popen([KILOTASK, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _health_or_none(url), 60, "serve answering")
        _wait(lambda: _health(url).get("worker", {}).get("state") == "up", 30, "worker up")
        return proc, url, log

    serve, url, log = start("serve-1.log")
    try:
        key = (data / "api_key").read_text().strip()
        rows = write_tsv(tmp_path / "train.tsv", sentiment_rows(256, seed=0)).read_bytes()
        ds = _call(url, key, "/v1/datasets", form=("train.tsv", rows))["id"]
        body = {"model": str(tiny_bert), "train_dataset": ds, "eval_dataset": ds,
                "method": "said", "dim": 150, "seed": 3,
                "hyperparameters": {"batch_size": 16, "max_length": 16, "max_steps": 400,
                                    "eval_every": 400, "learning_rate": 0.3}}  # fmt: skip
        job_id = _call(url, key, "/v1/jobs", body)["id"]
        _wait(lambda: _call(url, key, f"/v1/jobs/{job_id}")["progress"]["step"] >= 20, 120,
              "job at step 20")  # fmt: skip
        worker = _health(url)["worker"]["pid"]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()
    assert not Path(f"/proc/{worker}").exists()  # no orphan left training
    assert "Traceback" not in (tmp_path / "serve-1.log").read_text()

    serve, url, log = start("serve-2.log")
    try:
        done = _wait(lambda: _finished(url, key, job_id), 300, "job finished")
        assert done["status"] == "succeeded", done
        events = _call(url, key, f"/v1/jobs/{job_id}/events?limit=1000")["data"]
        handed = [e["data"]["message"] for e in events if "shutting down" in
                  e["data"].get("message", "")]  # fmt: skip
        assert len(handed) == 1, events
        step = int(handed[0].rsplit(" ", 1)[1])
        starts = [e["data"] for e in events if e["data"].get("status") == "running"]
        assert [s["attempt"] for s in starts] == [1, 1]  # no worker loss counted
        assert starts[1]["resumed_from_step"] == step >= 20
    finally:
        serve.terminate()
        serve.wait(timeout=90)
        log.close()
