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


@pytest.fixture()
def live(settings):
    """The app on a real uvicorn server on a free loopback port: (host, port, key headers)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield "127.0.0.1", port, new_key(settings)
    server.should_exit = True
    thread.join(timeout=10)


def raw_request(host: str, port: int, head: str, body: bytes = b"") -> tuple[int, bytes, float]:
    """Send the head and the first bytes of a body (never the rest) and read the answer:
    (status, body, seconds). The server must answer without waiting for what never comes."""
    import socket

    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1], time.perf_counter() - start


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/infer", "/v1/tasks", "/v1/jobs"])
def test_a_request_without_a_key_is_refused_before_its_body(live, path):
    """150 MB announced, 1 KB sent: the 401 comes at once (the body was received in full,
    then refused, before)."""
    host, port, _ = live
    kind = (
        "multipart/form-data; boundary=b"
        if path in ("/v1/datasets", "/v1/tasks")
        else "application/json"
    )
    head = f"POST {path} HTTP/1.1\nHost: x\nContent-Type: {kind}\nContent-Length: {150 * 2**20}\n"
    status, body, seconds = raw_request(host, port, head, b"[" * 1024)
    assert status == 401 and b"Authorization: Bearer" in body
    assert seconds < 2, seconds


def test_a_body_over_the_cap_is_413_from_its_length_before_it_is_read(live):
    host, port, auth = live
    head = (f"POST /v1/infer HTTP/1.1\nHost: x\nAuthorization: {auth['Authorization']}\n"
            f"Content-Type: application/json\nContent-Length: {40 * 2**20}\n")  # fmt: skip
    status, body, seconds = raw_request(host, port, head, b"[" * 1024)
    assert status == 413 and b"KILOTASK_MAX_BODY_MB" in body
    assert seconds < 2, seconds


def test_a_streamed_body_over_the_cap_is_413_as_soon_as_it_passes(settings, live):
    """Chunked, so no length to check first: the cap holds while the body streams."""
    host, port, auth = live
    head = (f"POST /v1/infer HTTP/1.1\nHost: x\nAuthorization: {auth['Authorization']}\n"
            "Content-Type: application/json\nTransfer-Encoding: chunked\n")  # fmt: skip
    piece = b"[" * 2**20
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    over = int(settings.max_body_mb) + 2
    status, body, _ = raw_request(host, port, head, chunk * over)
    assert status == 413 and b"KILOTASK_MAX_BODY_MB" in body
