"""The whole path through a real Celery worker process, real Redis and the test database:
upload, submit, watch, download, import as another tenant, predict; cancel; d90 searches.
(A worker killed mid-job: tests/integration/test_faults.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.models import Task
from app.db.session import session_factory
from app.engine.artifact import TaskArtifact
from app.engine.data import read_table
from app.engine.pipeline import predict_task
from app.main import create_app
from app.records.tasks import artifact_from_row
from tests.factories import sentiment_rows, write_tsv
from tests.integration.conftest import new_key
from tests.integration.services import fresh_database
from tests.integration.test_d90_api import search_body

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = os.environ.get("KILOTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def e2e_db_url(tmp_path_factory):
    """A database of this module's own (PostgreSQL when it is among the test backends, as in
    CI): the workers' sweepers act on every job they see, so other tests' jobs must not be
    there."""
    with fresh_database(tmp_path_factory.mktemp("e2e")) as url:
        yield url


@pytest.fixture()
def stack(e2e_db_url, tmp_path):
    db_url = e2e_db_url
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).flushdb()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}); the queue tests need it "
            "(set KILOTASK_TEST_REDIS_URL)",
            pytrace=False,
        )
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        broker_url=REDIS_URL,
        checkpoint_every=5,
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        KILOTASK_DATA_DIR=str(tmp_path),
        KILOTASK_DATABASE_URL=db_url,
        KILOTASK_BROKER_URL=REDIS_URL,
        KILOTASK_CHECKPOINT_EVERY="5",
        KILOTASK_RUN_LEASE_S="3",
    )
    workers: list[subprocess.Popen] = []
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 (closed after the workers stop)

    def start_worker() -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                "gpu",
                "-P",
                "solo",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        workers.append(proc)
        return proc

    yield settings, TestClient(create_app(settings)), start_worker
    for proc in workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.close()


def upload(client, auth, folder: Path, rows: int) -> str:
    path = write_tsv(folder / "train.tsv", sentiment_rows(rows, seed=0))
    with open(path, "rb") as f:
        r = client.post(
            "/v1/datasets", files={"file": ("train.tsv", f, "text/plain")}, headers=auth
        )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(client, auth, model: str, ds: str, key: str, **hp) -> dict:
    body = {
        "model": model,
        "train_dataset": ds,
        "eval_dataset": ds,
        "method": "said",
        "dim": 150,
        "seed": 3,
        "hyperparameters": {"batch_size": 16, "max_length": 16, **hp},
    }
    r = client.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": key})
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(client, auth, job_id: str, until, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if until(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job did not get there in {timeout}s: {job}")


def test_submit_train_download_import_and_predict(stack, tiny_bert, tmp_path):
    settings, client, start_worker = stack
    auth = new_key(settings)
    ds = upload(client, auth, tmp_path, 64)
    start_worker()
    job = submit(
        client, auth, str(tiny_bert), ds, "job-1", max_steps=12, eval_every=6, learning_rate=0.3
    )
    assert job["status"] == "queued"
    again = submit(
        client, auth, str(tiny_bert), ds, "job-1", max_steps=12, eval_every=6, learning_rate=0.3
    )
    assert again["id"] == job["id"]  # same key, same body: the same job

    done = wait_for(client, auth, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 12, "total": 12} and done["task_id"]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    kinds = {e["type"] for e in events}
    assert {"status", "progress", "metrics"} <= kinds

    r = client.get(f"/v1/tasks/{done['task_id']}/vector", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    downloaded = TaskArtifact.from_bytes(r.content)
    assert r.headers["etag"] == f'"{downloaded.digest}"'
    assert (
        client.get(
            f"/v1/tasks/{done['task_id']}/vector",
            headers={**auth, "If-None-Match": r.headers["etag"]},
        ).status_code
        == 304
    )

    other = new_key(settings)
    assert client.get(f"/v1/tasks/{done['task_id']}", headers=other).status_code == 404
    imported = client.post("/v1/tasks", files={"file": ("t.safetensors", r.content)}, headers=other)
    assert imported.status_code == 201, imported.text
    assert imported.json()["digest"] == downloaded.digest

    data = read_table(tmp_path / "train.tsv")
    from_file = predict_task(downloaded, data)
    with session_factory(settings)() as session:
        stored = artifact_from_row(session.get(Task, done["task_id"]))
    from_db = predict_task(stored, data)
    assert from_file.labels == from_db.labels and from_file.scores == from_db.scores
    assert from_file.metrics["accuracy"] == done["metrics"]["eval_accuracy"]
    train, held_out = done["metrics"]["train_accuracy"], done["metrics"]["eval_accuracy"]
    gap = (train - held_out) / (1 - held_out)  # paper §5.3
    assert done["metrics"]["gap"] == pytest.approx(gap)
    task = client.get(f"/v1/tasks/{done['task_id']}", headers=auth).json()
    # the task carries the held-out metrics, the selection metric's train value and the gap
    kept = {k: v for k, v in done["metrics"].items() if k.startswith("eval_")}
    kept |= {"train_accuracy": train, "gap": done["metrics"]["gap"]}
    assert task["metrics"] == kept and "train_mcc" in done["metrics"]


def test_cancel_stops_a_running_job(stack, tiny_bert, tmp_path):
    settings, client, start_worker = stack
    auth = new_key(settings)
    ds = upload(client, auth, tmp_path, 128)
    start_worker()
    # patience 0: no early stop, so the job is still running when the cancel comes
    job = submit(client, auth, str(tiny_bert), ds, "cancel-me", max_steps=100_000, patience=0)
    wait_for(client, auth, job["id"], lambda j: j["status"] == "running", timeout=120)
    asked = time.monotonic()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200
    done = wait_for(client, auth, job["id"], lambda j: j["status"] == "cancelled", timeout=30)
    assert time.monotonic() - asked < 10
    assert done["task_id"] is None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409


@pytest.mark.data
def test_sst2_subset_on_minilm_end_to_end(stack, glue_dir, tmp_path):
    """The issue's path on real data and the real base: SST-2 rows, MiniLM-L6, SAID."""
    settings, client, start_worker = stack
    auth, other = new_key(settings), new_key(settings)
    ids = {}
    for split, n in (("train", 96), ("dev", 48)):
        lines = (glue_dir / "SST-2" / f"{split}.tsv").read_text().splitlines()[: n + 1]
        r = client.post(
            "/v1/datasets",
            headers=auth,
            files={"file": (f"{split}.tsv", "\n".join(lines) + "\n", "text/plain")},
        )
        assert r.status_code == 201, r.text
        ids[split] = r.json()["id"]
    start_worker()
    body = {
        "model": "minilm-l6",
        "train_dataset": ids["train"],
        "eval_dataset": ids["dev"],
        "method": "said",
        "dim": 1000,
        "hyperparameters": {"max_steps": 4, "batch_size": 16, "max_length": 32},
    }
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    done = wait_for(
        client, auth, job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=300
    )
    assert done["status"] == "succeeded", done
    blob = client.get(f"/v1/tasks/{done['task_id']}/vector", headers=auth).content
    assert (
        client.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=other).status_code
        == 201
    )
    dev = read_table(glue_dir / "SST-2" / "dev.tsv")
    dev.texts, dev.labels = dev.texts[:48], dev.labels[:48]
    pred = predict_task(TaskArtifact.from_bytes(blob), dev)
    assert pred.metrics["accuracy"] == done["metrics"]["eval_accuracy"]


def test_search_runs_on_a_worker_and_stores_its_task(stack, tiny_bert, tmp_path):
    settings, client, start_worker = stack
    auth = new_key(settings)
    ds = upload(client, auth, tmp_path, 64)
    start_worker()
    r = client.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, ds), headers=auth)
    assert r.status_code == 202, r.text
    done = wait_for(client, auth, r.json()["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    results = client.get(f"/v1/intrinsic-dimension/{done['id']}", headers=auth).json()["results"]
    assert results["finished"] and results["points"]
    assert results["bar"] == pytest.approx(0.9 * results["full_metric"])
    events = client.get(f"/v1/jobs/{done['id']}/events", headers=auth).json()["data"]
    steps = [e["data"]["event"] for e in events if e["type"] == "d90"]
    assert steps.count("run_finished") == 1 + len(results["points"]) and steps[-1] == "finished"
    png = client.get(f"/v1/intrinsic-dimension/{done['id']}/curve.png", headers=auth)
    assert png.content[:4] == b"\x89PNG"
    if results["d90"] is None:
        assert done["task_id"] is None
    else:
        blob = client.get(f"/v1/tasks/{done['task_id']}/vector", headers=auth).content
        assert TaskArtifact.from_bytes(blob).dim == results["d90"]

    # DID on the same data reuses the SAID search's full fine-tuning instead of redoing it.
    payload = search_body(tiny_bert, ds, method="did", reuse_from=done["id"])
    r = client.post("/v1/intrinsic-dimension", json=payload, headers=auth)
    assert r.status_code == 202, r.text
    did = wait_for(client, auth, r.json()["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert did["status"] == "succeeded", did
    did_results = client.get(f"/v1/intrinsic-dimension/{did['id']}", headers=auth).json()
    assert did_results["results"]["full_metric"] == results["full_metric"]
    events = client.get(f"/v1/jobs/{did['id']}/events", headers=auth).json()["data"]
    kinds = {e["data"].get("kind") for e in events if e["data"].get("event") == "run_started"}
    assert kinds == {"did"}


def run_events(client, auth, job_id: str) -> list[dict]:
    events, after = [], 0  # every page: a search's progress events pass the 1000 of one page
    url = f"/v1/jobs/{job_id}/events?limit=1000&after="
    while page := client.get(f"{url}{after}", headers=auth).json()["data"]:
        events, after = events + page, page[-1]["id"]
    return [e["data"] for e in events if e["data"].get("event") == "run_started"]


def test_two_workers_share_a_search_and_take_back_a_dead_workers_run(stack, tiny_bert, tmp_path):
    """workers=2: both workers train runs of one search and none is trained twice, except the
    run of a helper killed mid-run, which the search's worker takes back once its lease runs
    out. (A killed search worker is a killed job: Redis redelivers it, as for training.)"""
    settings, client, start_worker = stack
    auth = new_key(settings)
    ds = upload(client, auth, tmp_path, 128)
    pids = {start_worker().pid, start_worker().pid}
    payload = search_body(tiny_bert, ds, lr_grid=[0.2, 0.5], full_lr_grid=[1e-2, 2e-2],
                          budget_steps=120, tolerance=4, workers=2)  # fmt: skip
    search = client.post("/v1/intrinsic-dimension", json=payload, headers=auth).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = run_events(client, auth, search["id"])
        if any(e["role"] == "helper" for e in started):
            break
        time.sleep(0.1)
    helped = [e for e in started if e["role"] == "helper"]
    assert helped, started  # the second worker joined
    victim, killed_run = worker_pid(helped[-1]), run_of(helped[-1])
    os.kill(victim, signal.SIGKILL)
    done = wait_for(client, auth, search["id"], lambda j: j["status"] in ("succeeded", "failed"),
                    timeout=300)  # fmt: skip
    assert done["status"] == "succeeded", done
    started = run_events(client, auth, search["id"])
    again = [e for e in started if run_of(e) == killed_run]
    assert len(again) == 2 and worker_pid(again[1]) == (pids - {victim}).pop()
    assert {worker_pid(e) for e in started} == pids
    others = [run_of(e) for e in started if run_of(e) != killed_run]
    assert len(others) == len(set(others))  # no other run was trained twice
    results = client.get(f"/v1/intrinsic-dimension/{search['id']}", headers=auth).json()
    assert len(set(others)) + 1 == 2 + 2 * len(results["results"]["points"])


def worker_pid(event: dict) -> int:
    return int(event["worker"].rsplit(":", 1)[1])


def run_of(event: dict) -> tuple:
    return event["kind"], event["d"], event["lr"]


def test_lowrank_job_runs_on_a_worker_and_serves_mixed(stack, tiny_bert, tmp_path):
    """A lowrank job with its own rank and targets through the real worker; the stored task
    names them, predicts as the job measured, exports as a PEFT zip and serves over /v1/infer."""
    import io
    import zipfile

    settings, client, start_worker = stack
    auth = new_key(settings)
    ds = upload(client, auth, tmp_path, 64)
    bad = {"model": str(tiny_bert), "train_dataset": ds, "method": "said", "rank": 4}
    r = client.post("/v1/jobs", json=bad, headers=auth)
    assert r.status_code == 422 and "rank" in r.json()["error"]["message"]
    start_worker()
    body = {
        "model": str(tiny_bert),
        "train_dataset": ds,
        "eval_dataset": ds,
        "method": "lowrank",
        "dim": 30,
        "rank": 2,
        "targets": ["query", "value", "key"],
        "hyperparameters": {"batch_size": 16, "max_length": 16, "max_steps": 10},
    }
    r = client.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": "lowrank-1"})
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"rank": 2, "targets": ["query", "value", "key"]}
    done = wait_for(client, auth, r.json()["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    meta = client.get(f"/v1/tasks/{done['task_id']}", headers=auth).json()
    assert (meta["method"], meta["spec"], meta["rank"]) == ("lowrank", "lowrank-v2", 2)
    assert meta["targets"] == "key,query,value"
    task = TaskArtifact.from_bytes(
        client.get(f"/v1/tasks/{done['task_id']}/vector", headers=auth).content
    )
    data = read_table(tmp_path / "train.tsv")
    assert predict_task(task, data).metrics["accuracy"] == done["metrics"]["eval_accuracy"]
    z = client.get(f"/v1/tasks/{done['task_id']}/export?format=peft", headers=auth)
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    names = set(zipfile.ZipFile(io.BytesIO(z.content)).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    out = client.post(
        "/v1/infer", json={"inputs": [{"task": done["task_id"], "text": data.texts[0]}]},
        headers=auth,
    ).json()["outputs"][0]  # fmt: skip
    want = predict_task(task, read_table(tmp_path / "train.tsv")).scores[0]
    assert abs(out["scores"][task.labels[0]] - want[0]) < 1e-5
