"""Job and task routes without a worker: validation, idempotency, tenancy, imports."""

import pytest
import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from tests.factories import make_task
from tests.integration.conftest import new_key


def body(model, ds, **kw):
    """A SAID job on the tiny BERT (64 positions: max_length must fit them)."""
    return {"model": str(model), "train_dataset": ds, "method": "said", "dim": 100,
            "hyperparameters": {"max_length": 16}, **kw}  # fmt: skip


def test_queued_job_has_the_contract_shape(client, auth, dataset, tiny_bert):
    r = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == {"step": 0, "total": None}
    assert job["error"] is None and job["task_id"] is None
    listed = client.get("/v1/jobs?limit=5", headers=auth).json()
    assert listed["total"] >= 1 and listed["data"][0]["id"] == job["id"]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    assert events[0]["type"] == "status" and events[0]["data"] == {"status": "queued"}


def test_idempotency_key_same_body_same_job_other_body_422(
    client, settings, auth, dataset, tiny_bert
):
    h = {**auth, "Idempotency-Key": "abc"}
    a = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=h).json()
    b = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=h).json()
    assert a["id"] == b["id"]
    c = client.post("/v1/jobs", json=body(tiny_bert, dataset, dim=101), headers=h)
    assert c.status_code == 422 and c.json()["error"]["code"] == "idempotency_key_reused"
    other = new_key(settings)
    d = client.post(
        "/v1/jobs", json=body(tiny_bert, dataset), headers={**other, "Idempotency-Key": "abc"}
    )
    assert d.status_code == 404  # the key is per tenant, and the dataset is not theirs


@pytest.mark.parametrize(
    "change,status,fragment",
    [
        ({"dim": 4}, 422, "dim must be in"),  # SAID: d > m, 4 layer groups on the tiny BERT
        ({"dim": 10**9}, 422, "dim must be in"),
        ({"method": "lora"}, 422, "method"),
        ({"model": "no-such-model"}, 422, "no-such-model"),
        ({"train_dataset": "ds_missing"}, 404, "ds_missing"),
        ({"hyperparameters": {"epochs": 1, "max_steps": 5}}, 422, "not both"),
        ({"hyperparameters": {"learning_rate": -1}}, 422, "learning_rate"),
        ({"hyperparameters": {"batch": 3}}, 422, "batch"),
        ({"seed": -5}, 422, "seed"),
    ],
)
def test_bad_job_requests_are_4xx_and_store_nothing(
    client, auth, dataset, tiny_bert, change, status, fragment
):
    before = client.get("/v1/jobs", headers=auth).json()["total"]
    r = client.post("/v1/jobs", json={**body(tiny_bert, dataset), **change}, headers=auth)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    assert client.get("/v1/jobs", headers=auth).json()["total"] == before


def test_cancel_queued_job_and_tenancy(client, settings, auth, dataset, tiny_bert):
    job = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth).json()
    other = new_key(settings)
    assert client.get(f"/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 409


def make_task_bytes(tiny_bert, **overrides) -> bytes:
    return make_task(str(tiny_bert), load_base(str(tiny_bert), 2, 0), **overrides).to_bytes()


def test_import_list_read_delete(client, settings, auth, tiny_bert):
    data = make_task_bytes(tiny_bert)
    r = client.post("/v1/tasks", files={"file": ("t.safetensors", data)}, headers=auth)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["bytes"] == len(data) and task["dim"] == 100 and task["job_id"] is None
    again = client.post("/v1/tasks", files={"file": ("t.safetensors", data)}, headers=auth)
    assert again.status_code == 200 and again.json()["id"] == task["id"]
    assert client.get("/v1/tasks", headers=auth).json()["total"] == 1
    other = new_key(settings)
    assert client.get(f"/v1/tasks/{task['id']}/vector", headers=other).status_code == 404
    assert client.delete(f"/v1/tasks/{task['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/tasks/{task['id']}", headers=auth).status_code == 204
    assert client.get(f"/v1/tasks/{task['id']}", headers=auth).status_code == 404


def test_bad_imports_are_refused_and_store_nothing(client, auth, tiny_bert, tmp_path):
    from tests.factories import make_tiny_bert

    cases = [
        (b"not a task file at all", 400, "not a kilotask task file"),
        (make_task_bytes(tiny_bert, base_digest="0" * 64), 422, "digest"),
        (make_task_bytes(tiny_bert, model="no-such-model"), 422, "no-such-model"),
    ]
    cases.append((nan_task_bytes(tiny_bert), 400, "finite"))
    other_base = make_tiny_bert(tmp_path / "other", seed=5)
    cases.append(
        (
            make_task_bytes(
                other_base,
                model=str(tiny_bert),
                base_digest=load_base(str(other_base), 2, 0).digest,
            ),
            422,
            "digest",
        )
    )
    for data, status, fragment in cases:
        r = client.post("/v1/tasks", files={"file": ("t.safetensors", data)}, headers=auth)
        assert r.status_code == status, (r.status_code, r.text)
        assert fragment in r.json()["error"]["message"]
    assert client.get("/v1/tasks", headers=auth).json()["total"] == 0


def nan_task_bytes(tiny_bert) -> bytes:
    """A well-formed file with a valid content digest whose vector holds a NaN."""
    import hashlib

    from safetensors.torch import save

    from app.engine.artifact import _canonical_json, _flatten

    valid = TaskArtifact.from_bytes(make_task_bytes(tiny_bert))
    meta = valid._metadata()
    theta_d = torch.cat([valid.theta, valid.lam])
    theta_d[0] = float("nan")
    h = hashlib.sha256(_canonical_json(meta).encode())
    h.update(b"theta_d")
    h.update(theta_d.numpy().tobytes())
    return save({"theta_d": theta_d}, metadata=_flatten({**meta, "digest": h.hexdigest()}))


def test_metrics_show_jobs_by_state_and_request_latency(client, auth, dataset, tiny_bert):
    client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth)
    text = client.get("/metrics").text
    queued = [
        line for line in text.splitlines() if line.startswith('kilotask_jobs{state="queued"}')
    ]
    assert queued and float(queued[0].split()[-1]) >= 1
    assert 'kilotask_request_seconds_count{method="POST",route="/v1/jobs",status="202"}' in text


def test_did_task_without_lambdas_round_trips(client, auth, tiny_bert):
    data = make_task_bytes(tiny_bert, method="did", lam=None, theta=torch.randn(100))
    r = client.post("/v1/tasks", files={"file": ("did.safetensors", data)}, headers=auth)
    assert r.status_code == 201, r.text
    back = client.get(f"/v1/tasks/{r.json()['id']}/vector", headers=auth).content
    assert TaskArtifact.from_bytes(back).digest == TaskArtifact.from_bytes(data).digest


def test_a_numeric_label_needs_the_task_type_for_jobs_and_searches(client, auth, tiny_bert):
    """A regression dataset: a job or a d90 search without "task" is 422 with a message that
    names "task": "regression"; accuracy for a regression task is 422; with the task type the
    job is queued, says so, and its metric defaults to pearson (a search stores it)."""
    from tests.factories import rating_rows
    from tests.integration.test_api_basics import tsv
    from tests.integration.test_d90_api import search_body

    files = {"file": ("r.tsv", tsv(rating_rows(40)), "text/plain")}
    ds = client.post("/v1/datasets", files=files, headers=auth).json()["id"]
    before = client.get("/v1/jobs", headers=auth).json()["total"]
    for path, payload in (("/v1/jobs", body(tiny_bert, ds)),
                          ("/v1/intrinsic-dimension", search_body(tiny_bert, ds))):  # fmt: skip
        r = client.post(path, json=payload, headers=auth)
        assert r.status_code == 422 and '"task": "regression"' in r.json()["error"]["message"]
    wrong = body(tiny_bert, ds, task="regression")
    wrong["hyperparameters"]["metric"] = "accuracy"
    r = client.post("/v1/jobs", json=wrong, headers=auth)
    assert r.status_code == 422 and "pearson, spearman" in r.json()["error"]["message"]
    assert client.get("/v1/jobs", headers=auth).json()["total"] == before  # nothing stored
    job = client.post("/v1/jobs", json=body(tiny_bert, ds, task="regression"), headers=auth)
    assert job.status_code == 202 and job.json()["task"] == "regression", job.text
    search = client.post("/v1/intrinsic-dimension", headers=auth,
                         json=search_body(tiny_bert, ds, task="regression"))  # fmt: skip
    assert search.status_code == 202, search.text
    assert search.json()["task"] == "regression"
    assert search.json()["hyperparameters"]["metric"] == "pearson"


def test_lists_page_by_key_steady_under_inserts(client, settings, auth, tiny_bert):
    """`after=<next_after>` walks every task once, newest first, even when a task is added
    between pages (offset paging would show one twice); offset counts from `after`; an id
    that is not the tenant's is a 404."""
    ids = []
    for seed in range(7):
        blob = make_task_bytes(tiny_bert, seed=seed)
        r = client.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=auth)
        ids.append(r.json()["id"])
    first = client.get("/v1/tasks?limit=3", headers=auth).json()
    assert [t["id"] for t in first["data"]] == ids[::-1][:3] and first["total"] == 7
    blob = make_task_bytes(tiny_bert, seed=99)  # arrives between the pages
    client.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=auth)
    seen, after = [t["id"] for t in first["data"]], first["next_after"]
    while after:
        page = client.get(f"/v1/tasks?limit=3&after={after}", headers=auth).json()
        seen += [t["id"] for t in page["data"]]
        after = page["next_after"]
    assert seen == ids[::-1]
    skipped = client.get(f"/v1/tasks?after={ids[5]}&offset=2", headers=auth).json()
    assert [t["id"] for t in skipped["data"]] == ids[2::-1]  # after ids[5], two skipped
    for path in ("/v1/tasks", "/v1/jobs", "/v1/datasets"):
        r = client.get(f"{path}?after=nope", headers=auth)
        assert r.status_code == 404 and "after" in r.json()["error"]["message"], r.text
    r = client.get(f"/v1/tasks?after={ids[0]}", headers=new_key(settings))  # not theirs
    assert r.status_code == 404


def test_a_batch_import_answers_each_file_and_stores_the_good_ones(client, auth, tiny_bert):
    """Five files in one request: three new (one of them sent twice), one already stored, one
    corrupt. Each gets its own answer, in order; the new ones are stored once."""
    known = make_task_bytes(tiny_bert, seed=1)
    client.post("/v1/tasks", files={"file": ("known.safetensors", known)}, headers=auth)
    new = [make_task_bytes(tiny_bert, seed=s) for s in (2, 3)]
    parts = [("a", new[0]), ("b", known), ("c", b"not a task file"), ("d", new[1]),
             ("e", new[0])]  # fmt: skip
    files = [("files", (f"{name}.safetensors", blob)) for name, blob in parts]
    r = client.post("/v1/tasks:batch", files=files, headers=auth)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [item["status"] for item in got["data"]] == [201, 200, 400, 201, 200]
    assert [item["filename"] for item in got["data"]] == [f"{n}.safetensors" for n, _ in parts]
    assert got["data"][2]["error"]["code"] and "task" not in got["data"][2]
    assert got["data"][4]["task"]["id"] == got["data"][0]["task"]["id"]
    assert (got["created"], got["existing"], got["failed"]) == (2, 2, 1)
    listed = client.get("/v1/tasks", headers=auth).json()
    assert listed["total"] == 3
    files = [("files", ("x.safetensors", b"junk")), ("files", ("y.safetensors", b"more"))]
    r = client.post("/v1/tasks:batch", files=files, headers=auth)
    assert r.status_code == 422 and "x.safetensors" in r.json()["error"]["message"]
