import pytest

from tests.factories import sentiment_rows
from tests.integration.conftest import new_key


def tsv(rows) -> bytes:
    cols = list(rows[0])
    lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def test_health_needs_no_key_and_checks_the_database(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer kt_not-a-real-key", "Basic abc"])
def test_routes_need_a_valid_key(client, header):
    headers = {"Authorization": header} if header else {}
    r = client.get("/v1/datasets/ds_x", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "API key" in r.json()["error"]["message"]


def test_unknown_route_uses_the_error_envelope(client, auth):
    r = client.get("/v1/nothing-here", headers=auth)
    assert r.status_code == 404 and set(r.json()["error"]) == {"code", "message"}


def test_upload_and_read_a_dataset(client, auth):
    files = {"file": ("sst2.tsv", tsv(sentiment_rows(40)), "text/tab-separated-values")}
    r = client.post("/v1/datasets", files=files, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["rows"] == 40 and body["columns"] == ["sentence", "label"]
    assert body["text_column"] == "sentence" and body["label_column"] == "label"
    assert sum(body["label_counts"].values()) == 40 and set(body["label_counts"]) == {"0", "1"}
    got = client.get(f"/v1/datasets/{body['id']}", headers=auth).json()
    assert got == body


def test_pair_dataset_with_explicit_columns(client, auth):
    rows = [{"q": f"is it {w}", "a": f"it is {w}", "y": w} for w in ["good", "bad"] * 5]
    files = {
        "file": (
            "pairs.jsonl",
            b"".join((__import__("json").dumps(r) + "\n").encode() for r in rows),
            "application/json",
        )
    }
    data = {"text_column": "q", "text_pair_column": "a", "label_column": "y"}
    r = client.post("/v1/datasets", files=files, data=data, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["text_pair_column"] == "a" and r.json()["label_counts"] == {"bad": 5, "good": 5}


def test_other_tenants_dataset_is_not_found(client, settings, auth):
    files = {"file": ("d.tsv", tsv(sentiment_rows(10)), "text/plain")}
    ds = client.post("/v1/datasets", files=files, headers=auth).json()
    other = new_key(settings)
    r = client.get(f"/v1/datasets/{ds['id']}", headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"


@pytest.mark.parametrize(
    "filename,content,data,status,fragment",
    [
        ("d.txt", b"sentence\tlabel\nok\t1\n", {}, 422, "must end with"),
        ("d.tsv", b"gj04\t1\t\tThe sailors rode the breeze.\n" * 3, {}, 422, "header"),
        ("d.tsv", b"sentence\tlabel\na\t1\nb\t1\n", {}, 422, "at least 2"),
        ("d.tsv", b"sentence\tlabel\na\t1\nb\t0\n", {"label_column": "stars"}, 422, "stars"),
        ("d.tsv", b"sentence\tlabel\na\t1\tx\n", {}, 422, "line 2"),
        ("d.tsv", b"sentence\tlabel\n" + b"x" * (1 << 20) + b"\t1\n", {}, 413, "limit"),
    ],
)
def test_bad_uploads_are_4xx_with_a_message_and_store_nothing(
    client, auth, filename, content, data, status, fragment
):
    r = client.post(
        "/v1/datasets", files={"file": (filename, content, "text/plain")}, data=data, headers=auth
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


@pytest.mark.slow
def test_models_lists_minilm_with_its_size_and_digest(client, auth):
    r = client.get("/v1/models", headers=auth)
    assert r.status_code == 200
    (model,) = [m for m in r.json()["data"] if m["id"] == "minilm-l6"]
    assert model["num_parameters"] == 22_713_986 and len(model["base_digest"]) == 64


def test_too_many_rows_is_refused(client, auth):
    rows = tsv(sentiment_rows(5001))  # the test settings allow 5000
    r = client.post("/v1/datasets", files={"file": ("big.tsv", rows, "text/plain")}, headers=auth)
    assert r.status_code == 422 and "5000" in r.json()["error"]["message"]
