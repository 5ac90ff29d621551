"""A real `kilotask serve` (embedded defaults: SQLite, folder broker, its own worker) and a real
headless Chromium driven by Playwright. Screenshots land in KILOTASK_ARTIFACTS_DIR (default
test-artifacts/console in the repo, ignored by git)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.services import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("KILOTASK_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
KILOTASK = str(Path(sys.executable).parent / "kilotask")


@dataclass
class Server:
    url: str
    key: str
    log: Path

    def call(self, path: str, body: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def upload(self, name: str, content: bytes) -> str:
        """POST a dataset file (multipart, columns auto-detected); returns its id."""
        boundary = "kilotaskboundary"
        data = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\n\r\n').encode() + content + (
                f"\r\n--{boundary}--\r\n").encode()  # fmt: skip
        headers = {"Authorization": f"Bearer {self.key}",
                   "Content-Type": f"multipart/form-data; boundary={boundary}"}  # fmt: skip
        req = urllib.request.Request(self.url + "/v1/datasets", data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["id"]

    def wait_job(self, job_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call(f"/v1/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end within {timeout}s")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("KILOTASK_ARTIFACTS_DIR", REPO / "test-artifacts" / "console"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def serving(folder: Path, timeout: float = 90) -> Iterator[Server]:
    """`kilotask serve` on embedded defaults in `folder`, on a free port, until its worker is
    up; stopped when the block ends."""
    port, data = free_port(), folder / "data"
    env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1")
    for name in ("KILOTASK_DATABASE_URL", "KILOTASK_BROKER_URL"):
        env.pop(name, None)
    log = folder / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([KILOTASK, "serve", "--port", str(port)], env=env, cwd=folder,
                                 stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                if (health.get("worker") or {}).get("state") == "up":
                    break
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise AssertionError(f"kilotask serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(url, (data / "api_key").read_text().strip(), log)
    finally:
        serve.terminate()
        serve.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("console-serve")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "playwright is not installed (scripts/setup.sh installs it)"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/setup.sh does)"
    if missing:  # CI sets KILOTASK_REQUIRE_BROWSER: there a missing browser fails loudly
        (pytest.fail if os.environ.get("KILOTASK_REQUIRE_BROWSER") else pytest.skip)(missing)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server, artifacts, request):
    """A fresh tab (own sessionStorage) that records every request it makes and every dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    tab.requests, tab.dialogs, tab.urls, tab.log = [], [], [], []
    tab.on("console", lambda m: tab.log.append(f"console {m.type}: {m.text}"))
    tab.on("response", lambda r: r.status >= 400 and tab.log.append(f"{r.status} {r.url}"))
    tab.on("request", lambda r: tab.requests.append(r.url))
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    tab.on("framenavigated", lambda f: tab.urls.append(f.url))
    tab.set_default_timeout(30_000)
    yield tab
    tab.screenshot(path=artifacts / f"last-{request.node.name}.png", full_page=True)
    print("\n".join(tab.log))  # shown with the test's output when it fails
    context.close()


def sign_in(page, server: Server) -> None:
    page.goto(server.url + "/")
    page.get_by_label("API key").fill(server.key)
    page.get_by_label("API key").press("Enter")  # the keyboard signs in
    page.get_by_role("navigation").wait_for()
