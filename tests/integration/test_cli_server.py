"""`kilotask predict --server` against a real server process on loopback, compared with the
same task predicted locally from its downloaded file."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.factories import sentiment_rows, write_tsv
from tests.integration.test_jobs_api import make_task_bytes

REPO = Path(__file__).resolve().parents[2]
KILOTASK = str(Path(sys.executable).parent / "kilotask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    env = dict(os.environ, KILOTASK_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    env.pop("KILOTASK_DATABASE_URL", None)
    env.pop("KILOTASK_BROKER_URL", None)
    proc = subprocess.Popen(
        [KILOTASK, "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    key = (tmp_path / "data" / "api_key").read_text().strip()
    yield url, key
    proc.terminate()
    proc.wait(timeout=30)


def test_predict_on_a_server_matches_the_local_file(server, tiny_bert, tmp_path):
    url, key = server
    blob = make_task_bytes(tiny_bert, seed=4)
    (tmp_path / "t.safetensors").write_bytes(blob)
    boundary = "kilotaskboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="t.safetensors"\r\n\r\n'
        ).encode()
        + blob
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url + "/v1/tasks",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    task_id = json.loads(urllib.request.urlopen(req).read())["id"]
    rows = write_tsv(tmp_path / "rows.tsv", sentiment_rows(20, seed=5))

    def run(*args):
        out = subprocess.run(
            [KILOTASK, "predict", *args, "--input", str(rows), "--label-column", "label"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return [json.loads(line) for line in out.stdout.splitlines()]

    remote = run(task_id, "--server", url, "--api-key", key, "--batch-size", "7")
    local = run(str(tmp_path / "t.safetensors"), "--model", str(tiny_bert))
    assert len(remote) == len(local) == 21
    assert remote[-1] == local[-1]  # the same accuracy, F1 and MCC
    for a, b in zip(remote[:-1], local[:-1], strict=True):
        assert a["label"] == b["label"]
        assert all(abs(a["scores"][k] - b["scores"][k]) < 1e-5 for k in a["scores"])

    bad = subprocess.run(
        [KILOTASK, "predict", "task_nope", "--server", url, "--api-key", key, "--input", str(rows)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "404" in bad.stderr and "Traceback" not in bad.stderr


def test_import_a_folder_in_chunks(server, tiny_bert, tmp_path):
    """`kilotask import DIR --server`: five task files and a broken one, two per request; each
    file's answer counted, the broken one named on stderr (exit 2); a second run finds them
    all stored."""
    url, key = server
    folder = tmp_path / "tasks"
    (folder / "sub").mkdir(parents=True)
    for seed in range(5):
        where = folder / ("sub" if seed % 2 else ".") / f"t{seed}.safetensors"
        where.write_bytes(make_task_bytes(tiny_bert, seed=seed))
    (folder / "broken.safetensors").write_bytes(b"not a task")

    def run():
        return subprocess.run(
            [KILOTASK, "import", str(folder), "--server", url, "--api-key", key, "--chunk", "2",
             "--quiet"], capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    first = run()
    assert first.returncode == 2, first.stderr
    assert json.loads(first.stdout) == {"files": 6, "created": 5, "existing": 0, "failed": 1}
    assert "broken.safetensors" in first.stderr
    again = run()
    assert json.loads(again.stdout) == {"files": 6, "created": 0, "existing": 5, "failed": 1}
