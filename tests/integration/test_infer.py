"""Multi-task inference: one base, tasks rebuilt on first use, cached, batched, isolated."""

import pytest
import torch
from fastapi.testclient import TestClient

from app.engine.artifact import TaskArtifact
from app.engine.data import LabelledText
from app.engine.pipeline import predict_task
from app.main import create_app
from tests.integration.conftest import new_key
from tests.integration.test_jobs_api import make_task_bytes

TEXTS = ["good great movie", "awful dull plot", "the film was so poor", "love it very nice"]


@pytest.fixture()
def tasks(client, auth, tiny_bert):
    from app.engine.base import load_base

    torch.manual_seed(0)
    m = len(list(load_base(str(tiny_bert), 2, 0).model.parameters()))
    blobs = [
        make_task_bytes(tiny_bert, seed=1, theta=torch.randn(100 - m) * 20),
        make_task_bytes(tiny_bert, seed=2, theta=torch.randn(100 - m) * 20, labels=["neg", "pos"]),
        make_task_bytes(tiny_bert, method="did", lam=None, theta=torch.randn(100) * 20),
    ]
    ids = []
    for blob in blobs:
        r = client.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=auth)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids, [TaskArtifact.from_bytes(b) for b in blobs]


def reference(art: TaskArtifact, texts: list[str]) -> list[list[float]]:
    data = LabelledText(texts, None, None, None, [])
    return predict_task(art, data, batch_size=1).scores


def test_mixed_request_matches_each_task_alone_and_predict(client, auth, tasks):
    ids, arts = tasks
    inputs = [{"task": ids[i % 3], "text": TEXTS[i % 4]} for i in range(12)]
    r = client.post("/v1/infer", json={"inputs": inputs}, headers=auth)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [o["index"] for o in outputs] == list(range(12))
    assert [o["task"] for o in outputs] == [x["task"] for x in inputs]
    for i, out in enumerate(outputs):
        art = arts[i % 3]
        want = reference(art, [TEXTS[i % 4]])[0]
        got = [out["scores"][label] for label in art.labels]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
        assert out["label"] == art.labels[max(range(len(want)), key=want.__getitem__)]
    again = client.post("/v1/infer", json={"inputs": inputs}, headers=auth).json()["outputs"]
    for a, b in zip(outputs, again, strict=True):  # warm equals cold
        assert a["label"] == b["label"]
        for k in a["scores"]:
            assert abs(a["scores"][k] - b["scores"][k]) < 1e-6
    state = client.get("/v1/serving", headers=auth).json()
    assert state["cache"]["misses"] == 3 and state["cache"]["hits"] >= 3


def test_single_predict_route(client, auth, tasks):
    ids, arts = tasks
    r = client.get(f"/v1/tasks/{ids[1]}/predict", params={"text": TEXTS[0]}, headers=auth)
    assert r.status_code == 200, r.text
    want = reference(arts[1], [TEXTS[0]])[0]
    assert abs(r.json()["scores"]["pos"] - want[1]) < 1e-5


def test_other_tenants_cannot_use_a_task(client, settings, tasks):
    ids, _ = tasks
    other = new_key(settings)
    r = client.post("/v1/infer", json={"inputs": [{"task": ids[0], "text": "x"}]}, headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"


@pytest.mark.parametrize(
    "inputs,fragment",
    [
        ([], "inputs"),
        ([{"task": "X", "text": ""}], "text"),
        ([{"task": "TASK0", "text": "hi", "text_pair": "there"}], "takes no text_pair"),
    ],
)
def test_bad_requests(client, auth, tasks, inputs, fragment):
    ids, _ = tasks
    inputs = [
        {**item, "task": ids[0] if item["task"] == "TASK0" else item["task"]} for item in inputs
    ]
    r = client.post("/v1/infer", json={"inputs": inputs}, headers=auth)
    assert r.status_code == 422 and fragment in r.json()["error"]["message"]


def test_cache_budget_evicts_least_recently_used(settings, auth, tasks):
    """A budget of one task: each miss evicts the last task and rebuilds into its buffer, and
    the recycled buffer gives exactly the task's own outputs (no residue of the previous one)."""
    ids, arts = tasks
    small = TestClient(create_app(settings.model_copy(update={"serving_cache_mb": 0.1})))
    for i in (0, 1, 0, 2):
        r = small.post(
            "/v1/infer", json={"inputs": [{"task": ids[i], "text": "nice"}]}, headers=auth
        )
        assert r.status_code == 200
        scores = r.json()["outputs"][0]["scores"]
        got = torch.tensor([scores[label] for label in arts[i].labels])
        want = torch.tensor(reference(arts[i], ["nice"])[0])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    cache = small.get("/v1/serving", headers=auth).json()["cache"]
    assert cache["misses"] == 4 and cache["evictions"] == 3 and cache["recycled_buffers"] == 3
    assert len(cache["resident_tasks"]) == 1 and cache["resident_mb"] <= 0.1


def test_pinned_task_stays_resident_under_pressure(settings, auth, tasks):
    ids, _ = tasks
    roomy = {"serving_cache_mb": 0.17, "serving_pin_share": 0.5}  # a tenant may pin one task
    small = TestClient(create_app(settings.model_copy(update=roomy)))
    assert small.post(f"/v1/tasks/{ids[0]}/pin", headers=auth).json()["pinned"] is True
    for i in (1, 2):  # room for two tasks: t0 pinned, t1 then t2 share the other place
        r = small.post(
            "/v1/infer", json={"inputs": [{"task": ids[i], "text": "nice"}]}, headers=auth
        )
        assert r.status_code == 200
    small.post("/v1/infer", json={"inputs": [{"task": ids[0], "text": "nice"}]}, headers=auth)
    cache = small.get("/v1/serving", headers=auth).json()["cache"]
    assert [t["pinned"] for t in cache["resident_tasks"]] == [False, True]  # t2, then t0
    assert cache["hits"] == 1 and cache["misses"] == 3 and cache["evictions"] == 1
    assert small.delete(f"/v1/tasks/{ids[0]}/pin", headers=auth).json()["resident"] is True
    text = small.get("/metrics").text
    assert "kilotask_cache_misses_total 3.0" in text and "kilotask_resident_tasks 2.0" in text
    assert "kilotask_reconstruction_seconds_count 3.0" in text


def test_pins_are_counted_per_tenant_and_never_starve_unpinned_tasks(settings, auth, tasks):
    """Room for three tasks (0.081 MB each); a tenant may pin 30 % of it (one task), all pins
    together 70 % (two): a tenant's second pin is 409 (its share), a third tenant's pin is 409
    (the pins' part is full), and a task that nobody pinned is still served (it was 503
    serving_budget_pinned when one tenant's pins could fill the whole budget)."""
    ids, _ = tasks
    roomy = {"serving_cache_mb": 0.3, "serving_pin_share": 0.3}
    small = TestClient(create_app(settings.model_copy(update=roomy)))
    assert small.post(f"/v1/tasks/{ids[0]}/pin", headers=auth).status_code == 200
    r = small.post(f"/v1/tasks/{ids[1]}/pin", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "pin_share_full", r.text
    assert "KILOTASK_SERVING_PIN_SHARE" in r.json()["error"]["message"]
    copies = {}
    for i in (1, 2):  # two other tenants import t1 and t2
        blob = small.get(f"/v1/tasks/{ids[i]}/vector", headers=auth).content
        key = new_key(settings)
        r = small.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=key)
        copies[i] = key, r.json()["id"]
    key, task = copies[1]
    assert small.post(f"/v1/tasks/{task}/pin", headers=key).status_code == 200
    key, task = copies[2]
    r = small.post(f"/v1/tasks/{task}/pin", headers=key)
    assert r.status_code == 409 and r.json()["error"]["code"] == "pin_budget_full", r.text
    r = small.post("/v1/infer", json={"inputs": [{"task": task, "text": "nice"}]}, headers=key)
    assert r.status_code == 200, r.text
    cache = small.get("/v1/serving", headers=auth).json()["cache"]
    assert cache["pinned_tasks"] == 2 and cache["live_mb"] <= 0.3
    shown = {t["digest"] for t in cache["resident_tasks"]}  # only this tenant's own tasks
    assert shown == {small.get(f"/v1/tasks/{i}", headers=auth).json()["digest"] for i in ids}
    stranger = small.get("/v1/serving", headers=new_key(settings)).json()["cache"]
    assert stranger["resident_tasks"] == [] and stranger["pinned_tasks"] == 2


def test_deleting_a_task_unpins_it(settings, auth, tasks):
    """It stayed pinned until a restart, and unpinning it then answered 404."""
    ids, _ = tasks
    roomy = {"serving_cache_mb": 0.17, "serving_pin_share": 0.5}
    small = TestClient(create_app(settings.model_copy(update=roomy)))
    assert small.post(f"/v1/tasks/{ids[0]}/pin", headers=auth).status_code == 200
    assert small.get("/v1/serving", headers=auth).json()["cache"]["pinned_tasks"] == 1
    assert small.delete(f"/v1/tasks/{ids[0]}", headers=auth).status_code == 204
    assert small.get("/v1/serving", headers=auth).json()["cache"]["pinned_tasks"] == 0
    assert (
        small.post(f"/v1/tasks/{ids[1]}/pin", headers=auth).status_code == 200
    )  # its share is free


def test_concurrent_clients_share_batches(settings, auth, tasks):
    import asyncio

    import httpx

    ids, arts = tasks
    app = create_app(settings.model_copy(update={"serving_max_wait_ms": 100.0}))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            one = {"inputs": [{"task": ids[0], "text": TEXTS[0]}]}
            await client.post("/v1/infer", json=one, headers=auth)  # warm the cache
            calls = [
                client.post(
                    "/v1/infer", json={"inputs": [{"task": ids[0], "text": t}]}, headers=auth
                )
                for t in TEXTS * 4
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert app.state.serving.batcher.batch_sizes.max > 1
    for r, text in zip(responses, TEXTS * 4, strict=True):
        want = reference(arts[0], [text])[0]
        got = [r.json()["outputs"][0]["scores"][k] for k in arts[0].labels]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_task_for_other_base_weights_is_refused_at_serving(client, settings, auth, tasks):
    """A row that slipped past import checks (e.g. the base folder changed) is still refused."""
    from sqlalchemy import update

    from app.db.models import Task
    from app.db.session import session_factory

    ids, _ = tasks
    with session_factory(settings)() as session:
        session.execute(update(Task).where(Task.id == ids[2]).values(base_digest="f" * 64))
        session.commit()
    r = client.post("/v1/infer", json={"inputs": [{"task": ids[2], "text": "nice"}]}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "base_model_mismatch"


def test_mixed_lowrank_tasks_share_one_batch_and_match_predict(client, auth, tiny_bert, tasks):
    """20 lowrank tasks (two seeds, two label counts, two ranks) and a SAID task in one call:
    every row equals `predict_task` (what `kilotask predict` runs) on that task alone, and the
    lowrank rows go through a couple of model calls, not one per task."""
    from tests.factories import make_lowrank_task

    arts = [
        make_lowrank_task(str(tiny_bert), num_labels=2 + k % 2, seed=k % 2 * 7,
                          rank=4 if k < 15 else 2, gen_seed=k)
        for k in range(20)
    ]  # fmt: skip
    ids = []
    for art in arts:
        r = client.post(
            "/v1/tasks", files={"file": ("t.safetensors", art.to_bytes())}, headers=auth
        )
        assert r.status_code == 201, r.text
        assert r.json()["rank"] == art.rank and r.json()["method"] == "lowrank"
        ids.append(r.json()["id"])
    said_id, said_art = tasks[0][0], tasks[1][0]
    inputs = [{"task": ids[k], "text": TEXTS[k % 4]} for k in range(20)]
    inputs += [{"task": said_id, "text": TEXTS[1]}, {"task": ids[3], "text": TEXTS[2]}]
    before = client.get("/v1/serving", headers=auth).json()["batches"]
    r = client.post("/v1/infer", json={"inputs": inputs}, headers=auth)
    assert r.status_code == 200, r.text
    state = client.get("/v1/serving", headers=auth).json()
    assert state["lowrank"]["resident_tasks"] == 20
    assert state["batches"] - before <= 3  # 21 lowrank rows in one or two calls, the SAID one
    by_id = dict(zip(ids, arts, strict=True)) | {said_id: said_art}
    for item, out in zip(inputs, r.json()["outputs"], strict=True):
        art = by_id[item["task"]]
        want = reference(art, [item["text"]])[0]
        got = [out["scores"][label] for label in art.labels]
        assert len(out["scores"]) == len(art.labels)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-5)


def test_regression_tasks_answer_a_score_alone_and_mixed(client, auth, tiny_bert, tasks):
    """Regression tasks (a SAID one, lowrank ones) answer {"score": x} on the targets' scale,
    mixed in one call with classifiers (and in one lowrank pass with classifying lowrank
    tasks), each equal to `predict_task` on that task alone."""
    from app.engine.base import load_base
    from tests.factories import make_lowrank_task, make_task

    torch.manual_seed(3)
    base = load_base(str(tiny_bert), 1, 0)
    m = len(list(base.model.parameters()))
    said = make_task(
        str(tiny_bert), base, labels=[], task_type="regression",
        target_stats=[3.0, 0.5], theta=torch.randn(100 - m) * 20,
    )  # fmt: skip
    lowrank = [
        make_lowrank_task(str(tiny_bert), num_labels=1 + k % 2, gen_seed=k) for k in range(4)
    ]
    arts = [said, *lowrank]
    ids = []
    for art in arts:
        r = client.post(
            "/v1/tasks", files={"file": ("t.safetensors", art.to_bytes())}, headers=auth
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    shown = client.get(f"/v1/tasks/{ids[0]}", headers=auth).json()
    assert shown["task_type"] == "regression" and shown["target_stats"] == [3.0, 0.5]
    assert shown["label_names"] == []
    inputs = [{"task": ids[k % 5], "text": TEXTS[k % 4]} for k in range(10)]
    inputs.append({"task": tasks[0][0], "text": TEXTS[0]})  # a classifier in the same call
    r = client.post("/v1/infer", json={"inputs": inputs}, headers=auth)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    for item, out in zip(inputs[:10], outputs, strict=False):
        art = arts[ids.index(item["task"])]
        data = LabelledText([item["text"]], None, None, None, [])
        want = predict_task(art, data, batch_size=1).outputs[0]
        if art.task_type == "regression":
            assert set(out) == {"index", "task", "score"}, out
            assert out["score"] == pytest.approx(want["score"], abs=1e-4)
        else:
            assert out["label"] == want["label"]
    assert set(outputs[10]) == {"index", "task", "label", "scores"}
    one = client.get(f"/v1/tasks/{ids[0]}/predict", params={"text": TEXTS[2]}, headers=auth)
    assert one.status_code == 200 and set(one.json()) == {"index", "task", "score"}


def test_export_zip_over_rest(client, auth, settings, tasks):
    """format=hf for a SAID task is a merged model folder; format=peft is refused for it (422,
    saying what to use); another tenant's task is 404; a bad format is 422."""
    import io
    import zipfile

    said_id = tasks[0][0]
    r = client.get(f"/v1/tasks/{said_id}/export?format=hf", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "config.json" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    r = client.get(f"/v1/tasks/{said_id}/export?format=peft", headers=auth)
    assert r.status_code == 422 and "format hf" in r.json()["error"]["message"]
    assert client.get(f"/v1/tasks/{said_id}/export?format=onnx", headers=auth).status_code == 422
    other = new_key(settings)
    assert client.get(f"/v1/tasks/{said_id}/export?format=hf", headers=other).status_code == 404
    import glob
    import tempfile

    left = glob.glob(f"{tempfile.gettempdir()}/kilotask-export-*.zip")
    assert not left, left  # the zip was streamed from a temporary file, then deleted


def _until(check, within: float) -> float:
    """Seconds until `check()` holds, polling; fails past `within`."""
    import time

    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "not seen in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_replicas_see_each_others_deletes_pins_and_unpins(settings, auth, tasks):
    """Two API processes (apps) on one database, lookups cached for 30 s: a pin, an unpin and
    a delete through A reach B through the task events within 2 s; A answers 404 for the
    deleted task at once."""
    ids, _ = tasks
    replica = settings.model_copy(update={"serving_lookup_ttl_s": 30.0, "replica_sync_s": 0.2})
    a, b = TestClient(create_app(replica)), TestClient(create_app(replica))
    body = {"inputs": [{"task": ids[0], "text": TEXTS[0]}]}
    assert a.post("/v1/infer", json=body, headers=auth).status_code == 200
    assert b.post("/v1/infer", json=body, headers=auth).status_code == 200  # cached on B now

    def pinned_on_b() -> int:
        return b.get("/v1/serving", headers=auth).json()["cache"]["pinned_tasks"]

    assert pinned_on_b() == 0
    assert a.post(f"/v1/tasks/{ids[1]}/pin", headers=auth).status_code == 200
    _until(lambda: pinned_on_b() == 1, within=2)
    assert a.delete(f"/v1/tasks/{ids[1]}/pin", headers=auth).status_code == 200
    _until(lambda: pinned_on_b() == 0, within=2)

    assert a.delete(f"/v1/tasks/{ids[0]}", headers=auth).status_code == 204
    gone = a.post("/v1/infer", json=body, headers=auth)  # A forgot it when it deleted it
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "task_not_found"
    _until(lambda: b.post("/v1/infer", json=body, headers=auth).status_code == 404, within=2)
    other = b.post("/v1/infer", json={"inputs": [{"task": ids[1], "text": "x"}]}, headers=auth)
    assert other.status_code == 200  # the other tasks are served as before
