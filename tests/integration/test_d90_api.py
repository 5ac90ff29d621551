"""d90 searches over REST without a worker: validation, reads, tenancy. The search itself runs
on a real worker in test_worker_e2e."""

import pytest

from tests.integration.conftest import new_key
from tests.integration.test_jobs_api import body


def search_body(model, ds, **kw):
    return {
        "model": str(model), "train_dataset": ds, "eval_dataset": ds, "method": "said",
        "min_d": 10, "max_d": 3000, "sweep_points": 3, "lr_grid": [0.3],
        "full_lr_grid": [1e-2], "budget_steps": 16, "batch_size": 16, "max_length": 16, **kw,
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"min_d": 500, "max_d": 400}, "min_d must be smaller"),
        ({"lr_grid": [0]}, "lr_grid.0: Input should be greater than 0"),
        ({"full_lr_grid": [11]}, "full_lr_grid.0: Input should be less than or equal to 10"),
        ({"batch_size": 4096, "max_length": 4096}, "at most 65,536"),
        ({"method": "full"}, "said"),
        ({"min_d": 1, "max_d": 4}, "no d to search"),  # SAID: d > m (4 here)
        ({"eval_dataset": "dataset_nope"}, "not found"),
        ({"rank": 4}, "do not apply to method 'said'"),
        ({"method": "lowrank", "targets": ["nope"]}, "no nn.Linear layer"),
    ],
)
def test_bad_searches_are_4xx_and_store_nothing(client, auth, dataset, tiny_bert, change, fragment):
    before = client.get("/v1/jobs", headers=auth).json()["total"]
    r = client.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset, **change),
                    headers=auth)  # fmt: skip
    assert r.status_code in (404, 422) and fragment in r.text, r.text
    assert client.get("/v1/jobs", headers=auth).json()["total"] == before


def test_queued_search_reads_and_is_not_a_training_job(client, auth, dataset, tiny_bert):
    r = client.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset), headers=auth)
    assert r.status_code == 202, r.text
    search = r.json()
    assert search["kind"] == "d90" and search["status"] == "queued" and search["results"] == {}
    read = client.get(f"/v1/intrinsic-dimension/{search['id']}", headers=auth)
    assert read.status_code == 200 and read.json()["id"] == search["id"]
    png = client.get(f"/v1/intrinsic-dimension/{search['id']}/curve.png", headers=auth)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    other = new_key_for(client)
    assert client.get(f"/v1/intrinsic-dimension/{search['id']}", headers=other).status_code == 404
    train = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth)
    assert train.status_code == 202, train.text
    train = train.json()
    r = client.get(f"/v1/intrinsic-dimension/{train['id']}", headers=auth)
    assert r.status_code == 404 and "training job" in r.text


def new_key_for(client):
    import asyncio

    from app.api.deps import current_settings

    given = client.app.dependency_overrides.get(current_settings, current_settings)
    settings = asyncio.run(given())
    return new_key(settings)


def test_unreachable_broker_is_503_and_the_search_is_marked_failed(
    settings,
    auth,
    dataset,
    tiny_bert,
):
    from fastapi.testclient import TestClient

    from app.main import create_app

    down = TestClient(
        create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    )
    r = down.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset), headers=auth)
    assert r.status_code == 503 and "queue is unreachable" in r.text, r.text
    latest = down.get("/v1/jobs?limit=1", headers=auth).json()["data"][0]
    assert latest["kind"] == "d90" and latest["status"] == "failed"
    assert latest["error"]["code"] == "broker_unavailable"


def test_reuse_from_needs_finished_runs_trained_the_same_way(client, auth, dataset, tiny_bert):
    said = client.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset),
                       headers=auth).json()  # fmt: skip
    before = client.get("/v1/jobs", headers=auth).json()["total"]

    def did(**kw):
        changes = {"method": "did", "reuse_from": said["id"]} | kw
        payload = search_body(tiny_bert, dataset, **changes)
        return client.post("/v1/intrinsic-dimension", json=payload, headers=auth)

    r = did(budget_steps=8, full_lr_grid=[1e-3])
    assert r.status_code == 422 and "other budget_steps, full_lr_grid" in r.text, r.text
    r = did()  # same settings, but the source is still queued: no bar yet
    assert r.status_code == 409 and "has not finished a full or did run" in r.text, r.text
    r = did(reuse_from="job_nope")
    assert r.status_code == 404, r.text
    r = client.post("/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset,
                    reuse_from=said["id"]), headers=new_key_for(client))  # fmt: skip
    assert r.status_code == 404, r.text  # another tenant's search is not there
    assert client.get("/v1/jobs", headers=auth).json()["total"] == before
