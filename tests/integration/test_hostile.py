"""A hostile tenant, request by request (issue 23): each test sends what one did and checks
that the service answers a clear 4xx, keeps answering everyone else, and stores nothing
broken. Kept as a regression suite: a new hole gets its request here."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.integration.conftest import new_key

pytestmark = pytest.mark.integration


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def slowest_health_check_during(client: TestClient, work) -> tuple[float, object]:
    """Run `work()` in a thread and poll /healthz until it ends: the slowest answer (s)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", work()))
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        start = time.perf_counter()
        assert client.get("/healthz").status_code in (200, 503)  # 503: no worker (none runs)
        slowest = max(slowest, time.perf_counter() - start)
        time.sleep(0.02)
    thread.join()
    return slowest, result.get("value")


@pytest.fixture()
def roomy(settings):
    """A server that takes a 10 MB, 200,000-row upload."""
    wide = settings.model_copy(update={"max_upload_mb": 20.0, "max_rows": 10**6})
    return TestClient(create_app(wide)), new_key(wide)


def test_a_50000_column_csv_is_refused_at_once_and_health_stays_fast(roomy):
    client, auth = roomy
    header = ",".join(f"c{i}" for i in range(50_000))
    content = (header + "\n" + ",".join("x" for _ in range(50_000)) + "\n").encode()

    def upload():
        return client.post("/v1/datasets", files={"file": ("w.csv", content)}, headers=auth)

    slowest, r = slowest_health_check_during(client, upload)
    assert "50000 columns" in error_of(r, 422)["message"]
    assert slowest < 0.5, slowest


def test_a_large_upload_is_parsed_off_the_event_loop(roomy):
    """Parsing 200,000 rows takes about a second; /healthz answers meanwhile (it waited for the
    whole parse when the route parsed on the event loop)."""
    client, auth = roomy
    rows = "".join(f"sentence number {i} with some words\t{i % 2}\n" for i in range(200_000))
    content = ("sentence\tlabel\n" + rows).encode()

    def upload():
        return client.post("/v1/datasets", files={"file": ("big.tsv", content)}, headers=auth)

    slowest, r = slowest_health_check_during(client, upload)
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 200_000
    assert slowest < 0.5, slowest


def test_deeply_nested_jsonl_is_a_clear_422(client, auth):
    line = '{"text": "a", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    r = client.post("/v1/datasets", files={"file": ("d.jsonl", line.encode())}, headers=auth)
    assert "line 1 is not a JSON object" in error_of(r, 422)["message"]
