"""Private copies of the services, for tests that stop or restart them: a redis-server and a
PostgreSQL cluster (initdb + pg_ctl) on free loopback ports, in the test's tmp folder. The
machine's shared services are never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("KILOTASK_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, up: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if (s.connect_ex(("127.0.0.1", port)) == 0) == up:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} in {timeout}s")


class RedisServer:
    """redis-server without persistence, so a restart loses every queued message."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH; the fault tests need it", pytrace=False)
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, up=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: nothing is saved
            self.proc.wait()
        _wait_port(self.port, up=False)


class PostgresCluster:
    """A throwaway cluster in its own folder under the system temp folder (pytest's are
    private to root). initdb and pg_ctl refuse to run as root, so as root they run as the
    `postgres` user."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"initdb not found in {PG_BIN} (set KILOTASK_TEST_PG_BIN)", pytrace=False)
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="kilotask-pg-")), free_port()
        self.data = self.folder / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")

    def init(self) -> PostgresCluster:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self.start()

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "start")  # fmt: skip
        _wait_port(self.port, up=True)
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        _wait_port(self.port, up=False)

    def remove(self) -> None:
        """Stop it if it runs, and delete its folder."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def worker_env(data_dir: Path, database_url: str, broker_url: str, **settings: str) -> dict:
    """The environment of a worker process: KILOTASK_<NAME> for each setting given."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
               KILOTASK_DATA_DIR=str(data_dir), KILOTASK_DATABASE_URL=database_url,
               KILOTASK_BROKER_URL=broker_url)  # fmt: skip
    env.update({f"KILOTASK_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_worker(env: dict, log) -> subprocess.Popen:
    """A real Celery worker, started as `kilotask worker` starts one."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "gpu",
         "-P", "solo", "--loglevel=WARNING", "--without-gossip", "--without-mingle"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


@contextmanager
def fresh_database(folder: Path) -> Iterator[str]:
    """An empty, migrated database for tests that run workers: a worker's sweeper acts on every
    job in its database, so it must not see other tests' queued or running jobs. A new database
    on the test PostgreSQL server (dropped afterwards) when PostgreSQL is among the backends,
    else an SQLite file in `folder`."""
    from sqlalchemy import create_engine, text

    from app.db.migrate import upgrade
    from app.db.session import get_engine
    from tests.integration.conftest import BACKENDS, POSTGRES_URL

    if "postgres" not in BACKENDS:
        url = f"sqlite:///{folder / 'kilotask.db'}"
        upgrade(url)
        yield url
        return
    name = f"kilotask_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        from app.config import Settings

        get_engine(Settings(database_url=url)).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
