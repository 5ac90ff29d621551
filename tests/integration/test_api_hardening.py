"""Bad input gets a clear 4xx in the error envelope, never a 500 or a hang: idempotency keys
(empty, raced), empty ids, huge integers, the auth scheme's case, 405's Allow, upload names, an
unreachable database, per-tenant limits, and the OpenAPI document of all of it."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.models import Job
from app.db.session import session_factory
from app.errors import IdempotencyMismatchError
from app.jobs.service import create_job, find_idempotent, request_hash
from app.main import create_app
from app.records.keys import tenant_for_key
from tests.integration.conftest import new_key
from tests.integration.test_d90_api import search_body
from tests.integration.test_jobs_api import body

pytestmark = pytest.mark.integration


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    return r.json()["error"]


def jobs_of(client, auth) -> int:
    return client.get("/v1/jobs", headers=auth).json()["total"]


@pytest.mark.parametrize("key", ["", " ", "a b", "tab\there", "x" * 256, "é"])
def test_bad_idempotency_keys_are_422_on_both_submit_routes(client, auth, dataset, tiny_bert, key):
    for path, payload in (
        ("/v1/jobs", body(tiny_bert, dataset)),
        ("/v1/intrinsic-dimension", search_body(tiny_bert, dataset)),
    ):
        headers = {**auth, "Idempotency-Key": key.encode()}
        err = error_of(client.post(path, json=payload, headers=headers), 422)
        assert "Idempotency-Key must be 1-255 visible" in err["message"]
    assert jobs_of(client, auth) == 0


def test_a_raced_idempotency_key_answers_as_the_first_request(settings, auth, dataset, tiny_bert):
    """Request A looks the key up (nothing yet), request B inserts it, then A inserts: A gets
    B's job with the same body, and 422 with another body, never an IntegrityError."""
    fields = dict(
        model=str(tiny_bert), method="said", dim=100, seed=0, train_dataset_id=dataset,
        eval_dataset_id=None, hyperparameters={}, options=None,
    )  # fmt: skip
    digest, other = request_hash({"n": 1}), request_hash({"n": 2})
    make = session_factory(settings)
    with make() as a, make() as b:
        tenant = tenant_for_key(a, auth["Authorization"])
        assert find_idempotent(a, tenant, "race-1", digest) is None
        first, created = create_job(b, tenant, dict(fields), "race-1", digest)
        assert created
        again, created = create_job(a, tenant, dict(fields), "race-1", digest)
        assert not created and again.id == first.id
        assert find_idempotent(a, tenant, "race-2", other) is None
        create_job(b, tenant, dict(fields), "race-2", digest)
        with pytest.raises(IdempotencyMismatchError):
            create_job(a, tenant, dict(fields), "race-2", other)
    with make() as s:
        assert s.query(Job).filter(Job.tenant_id == tenant).count() == 2


def test_concurrent_submissions_with_one_key_make_one_job(client, auth, dataset, tiny_bert):
    client.post("/v1/jobs", json=body(tiny_bert, dataset, dim=99), headers=auth)  # warm up
    start, answers = threading.Barrier(6), []

    def submit() -> None:
        start.wait()
        headers = {**auth, "Idempotency-Key": "same-key"}
        answers.append(client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=headers))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert jobs_of(client, auth) == 2


@pytest.mark.parametrize("field", ["train_dataset", "eval_dataset"])
def test_empty_dataset_ids_are_422_not_500(client, auth, dataset, tiny_bert, field):
    for path, payload in (
        ("/v1/jobs", body(tiny_bert, dataset, eval_dataset=dataset)),
        ("/v1/intrinsic-dimension", search_body(tiny_bert, dataset)),
    ):
        err = error_of(client.post(path, json={**payload, field: ""}, headers=auth), 422)
        assert field in err["message"] and "at least 1 character" in err["message"]
    assert jobs_of(client, auth) == 0


@pytest.mark.parametrize(
    "url",
    [
        "/v1/jobs?offset=9223372036854775808",
        "/v1/jobs?offset=1000000001",
        "/v1/tasks?offset=99999999999999999999999",
        "/v1/jobs?limit=-1",
        "/v1/jobs/job_x/events?after=9223372036854775808",
        "/v1/jobs/job_x/events?after=2147483648",
        "/v1/jobs/job_x/events?after=-1",
        "/v1/jobs?status=nonsense",
    ],
)
def test_out_of_range_query_integers_are_422(client, auth, url):
    err = error_of(client.get(url, headers=auth), 422)
    assert err["code"] == "validation_error" and "query." in err["message"]


def test_largest_allowed_integers_are_answered(client, auth, dataset, tiny_bert):
    job = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth).json()
    assert client.get("/v1/jobs?offset=1000000000", headers=auth).json()["data"] == []
    r = client.get(f"/v1/jobs/{job['id']}/events?after={2**31 - 1}", headers=auth)
    assert r.status_code == 200 and r.json()["data"] == []


def test_ids_that_cannot_exist_are_422(client, auth):
    assert error_of(client.get("/v1/jobs/a%00b", headers=auth), 422)["code"] == "validation_error"
    assert error_of(client.get("/v1/tasks/" + "x" * 65, headers=auth), 422)
    assert error_of(client.get("/v1/jobs/job_missing", headers=auth), 404)


@pytest.mark.parametrize("template", ["bearer {}", "BEARER {}", "Bearer   {}  ", "  bEaReR {}"])
def test_the_auth_scheme_is_case_insensitive(client, settings, template):
    key = new_key(settings)["Authorization"].split()[1]
    r = client.get("/v1/jobs", headers={"Authorization": template.format(key)})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Token abc", "bearerabc"])
def test_malformed_authorization_is_401(client, header):
    err = error_of(client.get("/v1/jobs", headers={"Authorization": header}), 401)
    assert "Authorization: Bearer <key>" in err["message"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("TRACE", "/v1/jobs", {"GET", "POST"}),
        ("PUT", "/v1/tasks/task_x", {"GET", "DELETE"}),
        ("OPTIONS", "/v1/tasks/task_x/pin", {"POST", "DELETE"}),
        ("PATCH", "/v1/tasks", {"GET", "POST"}),
    ],
)
def test_unsupported_methods_are_405_with_every_allowed_method(client, auth, method, path, allowed):
    r = client.request(method, path, headers=auth)
    assert error_of(r, 405)["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers["allow"]


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "the file is empty"), (b"text,label\n", "no data rows"), (b"a,b\n1\n", "line 2")],
)
def test_upload_errors_name_the_uploaded_file(client, auth, content, fragment):
    files = {"file": ("mydata.csv", content, "text/csv")}
    err = error_of(client.post("/v1/datasets", files=files, headers=auth), 422)
    assert "mydata.csv" in err["message"] and fragment in err["message"]
    assert "tmp" not in err["message"]


@pytest.mark.parametrize("name", [b"a" * 252 + b".csv", b"bad\x01name.csv"])
def test_unstorable_upload_names_are_422(client, auth, name):
    """Raw multipart, as httpx would percent-encode the control character."""
    content = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: text/csv\r\n\r\ntext,label\na,0\nb,1\n\r\n--B--\r\n"
    )
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=B"}
    err = error_of(client.post("/v1/datasets", content=content, headers=headers), 422)
    assert "file name must be at most 255 printable characters" in err["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_is_503_at_once(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    down = TestClient(create_app(Settings(data_dir=tmp_path, database_url=url)))
    for path in ("/v1/jobs", "/v1/datasets/ds_x", "/metrics"):
        start = time.monotonic()
        r = down.get(path, headers={"Authorization": "Bearer kt_whatever"})
        assert time.monotonic() - start < 5
        err = error_of(r, 503)
        assert err["code"] == "database_unavailable" and "try again" in err["message"]
        assert int(r.headers["retry-after"]) >= 1


def test_active_jobs_limit_is_429_and_replays_pass(client, settings, auth, dataset, tiny_bert):
    limited = TestClient(create_app(settings.model_copy(update={"tenant_max_active_jobs": 2})))
    first = {**auth, "Idempotency-Key": "first"}
    a = limited.post("/v1/jobs", json=body(tiny_bert, dataset), headers=first)
    b = limited.post("/v1/jobs", json=body(tiny_bert, dataset, dim=101), headers=auth)
    assert (a.status_code, b.status_code) == (202, 202), (a.text, b.text)
    for path, payload in (
        ("/v1/jobs", body(tiny_bert, dataset, dim=102)),
        ("/v1/intrinsic-dimension", search_body(tiny_bert, dataset)),
    ):
        r = limited.post(path, json=payload, headers=auth)
        err = error_of(r, 429)
        assert err["code"] == "too_many_active_jobs" and r.headers["retry-after"] == "30"
        assert "2 jobs are queued or running" in err["message"]
        assert "KILOTASK_TENANT_MAX_ACTIVE_JOBS" in err["message"]
    replay = limited.post("/v1/jobs", json=body(tiny_bert, dataset), headers=first)
    assert replay.status_code == 202 and replay.json()["id"] == a.json()["id"]
    other = new_key(settings)
    assert limited.get("/v1/jobs", headers=other).json()["total"] == 0
    limited.post(f"/v1/jobs/{a.json()['id']}/cancel", headers=auth)
    c = limited.post("/v1/jobs", json=body(tiny_bert, dataset, dim=102), headers=auth)
    assert c.status_code == 202, c.text


@pytest.mark.parametrize("rps, retry_after", [(1.0, "1"), (0.25, "4")])
def test_inference_rate_limit_is_429_per_tenant(settings, auth, rps, retry_after):
    limited = TestClient(create_app(settings.model_copy(update={"tenant_infer_rps": rps})))
    infer = {"inputs": [{"task": "task_missing", "text": "good film"}]}
    assert limited.post("/v1/infer", json=infer, headers=auth).status_code == 404
    for r in (
        limited.post("/v1/infer", json=infer, headers=auth),
        limited.get("/v1/tasks/task_missing/predict?text=good", headers=auth),
    ):
        err = error_of(r, 429)
        assert err["code"] == "rate_limited" and "KILOTASK_TENANT_INFER_RPS" in err["message"]
        assert r.headers["retry-after"] == retry_after
    other = new_key(settings)
    assert limited.post("/v1/infer", json=infer, headers=other).status_code == 404


def test_openapi_documents_every_answer_with_the_envelope(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, op in item.items():
            public = path in ("/healthz", "/metrics")
            if path == "/healthz":
                continue  # its 503 carries the health report, not an error
            assert public or op.get("security") == [{"bearerAuth": []}], (method, path)
            codes = set(op["responses"])
            assert public or {"401", "503"} <= codes, (method, path)
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, (method, path)
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
            for code in {"429", "503"} & codes:
                assert "Retry-After" in op["responses"][code]["headers"], (method, path, code)


def test_seeds_are_stored_up_to_the_column_and_refused_above(client, auth, dataset, tiny_bert):
    r = client.post("/v1/jobs", json=body(tiny_bert, dataset, seed=2**31 - 1), headers=auth)
    assert r.status_code == 202, r.text
    for path, payload in (
        ("/v1/jobs", body(tiny_bert, dataset, seed=2**31)),
        ("/v1/intrinsic-dimension", search_body(tiny_bert, dataset, seed=2**32 - 1)),
    ):
        err = error_of(client.post(path, json=payload, headers=auth), 422)
        assert "seed" in err["message"] and "2147483647" in err["message"]


@pytest.mark.parametrize(
    "overrides, fragment",
    [({"seed": 2**31}, "seed = 2147483648"), ({"text_column": "t" * 256}, "text_column")],
)
def test_task_files_the_tables_cannot_hold_are_422(client, auth, tiny_bert, overrides, fragment):
    from tests.integration.test_jobs_api import make_task_bytes

    data = make_task_bytes(tiny_bert, **overrides)
    r = client.post("/v1/tasks", files={"file": ("t.safetensors", data)}, headers=auth)
    assert fragment in error_of(r, 422)["message"]
    assert client.get("/v1/tasks", headers=auth).json()["total"] == 0


def test_an_unknown_query_parameter_is_422_naming_it(client, auth):
    r = client.get("/v1/jobs?ofset=40", headers=auth)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_query_parameter"
    assert "'ofset'" in error["message"] and "offset" in error["message"]
    assert client.get("/v1/jobs?offset=0&limit=5", headers=auth).status_code == 200


def test_the_inference_rate_is_shared_by_replicas_on_one_redis(settings, auth):
    """Two apps (API replicas) on the same Redis, 1 request/s per tenant: of six requests sent
    at once, alternating between them, only the one token of the shared bucket passes (two,
    were each replica counting alone); an unreachable Redis falls back to each process's own
    bucket instead of failing the request."""
    from tests.integration.test_worker_e2e import REDIS_URL

    shared = settings.model_copy(update={"tenant_infer_rps": 1.0, "broker_url": REDIS_URL})
    a, b = TestClient(create_app(shared)), TestClient(create_app(shared))
    infer = {"inputs": [{"task": "task_missing", "text": "good film"}]}
    codes = [(a, b)[i % 2].post("/v1/infer", json=infer, headers=auth).status_code
             for i in range(6)]  # fmt: skip
    assert codes.count(404) == 1 and codes.count(429) == 5, codes  # 404: it passed the limit
    away = settings.model_copy(
        update={"tenant_infer_rps": 1.0, "broker_url": "redis://127.0.0.1:1/0"}
    )
    alone = TestClient(create_app(away))
    assert alone.post("/v1/infer", json=infer, headers=auth).status_code == 404
    assert alone.post("/v1/infer", json=infer, headers=auth).status_code == 429
