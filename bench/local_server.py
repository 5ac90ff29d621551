"""`kilotask serve --no-worker` on a free loopback port with a temporary data folder, for the
serving benchmarks: started, waited for, and stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LocalServer:
    process: subprocess.Popen
    url: str
    port: int
    key: str
    data: Path


@contextlib.contextmanager
def local_server(**env: str) -> Iterator[LocalServer]:
    """The server with `env` added (KILOTASK_… settings), its admin key read from the folder."""
    data = Path(tempfile.mkdtemp(prefix="kilotask-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1", **env)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None:
                    raise RuntimeError("kilotask serve exited before answering") from None
                time.sleep(0.2)
        yield LocalServer(process, url, port, (data / "api_key").read_text().strip(), data)
    finally:
        process.terminate()
        process.wait(timeout=60)
