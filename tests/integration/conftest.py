"""Service tests against real databases: SQLite (the embedded default) and PostgreSQL.

KILOTASK_TEST_BACKENDS picks them (default "sqlite,postgres"); a PostgreSQL that is asked for
but not reachable fails the run loudly rather than skipping.
"""

from __future__ import annotations

import os
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.config import Settings
from app.db.migrate import upgrade
from app.db.session import session_factory
from app.main import create_app
from app.records.keys import create_key

BACKENDS = [
    b.strip() for b in os.environ.get("KILOTASK_TEST_BACKENDS", "sqlite,postgres").split(",")
]
POSTGRES_URL = os.environ.get(
    "KILOTASK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _fresh_postgres() -> str:
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__}: {exc}). Start "
            "it, point KILOTASK_TEST_POSTGRES_URL at one, or set KILOTASK_TEST_BACKENDS=sqlite.",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kilotask.db'}"
    elif request.param == "postgres":
        url = _fresh_postgres()
    else:
        raise ValueError(f"unknown backend {request.param}")
    upgrade(url)
    return url


@pytest.fixture()
def settings(db_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=db_url, max_upload_mb=1, max_rows=5000)


@pytest.fixture()
def client(settings) -> TestClient:
    return TestClient(create_app(settings))


def new_key(settings: Settings, tenant: str | None = None) -> dict[str, str]:
    with session_factory(settings)() as session:
        _, key = create_key(session, tenant or f"tenant-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def auth(settings) -> dict[str, str]:
    return new_key(settings)


@pytest.fixture()
def dataset(client, auth) -> str:
    """A small labelled dataset uploaded by `auth`'s tenant; returns its id."""
    from tests.factories import sentiment_rows
    from tests.integration.test_api_basics import tsv

    files = {"file": ("d.tsv", tsv(sentiment_rows(20)), "text/plain")}
    return client.post("/v1/datasets", files=files, headers=auth).json()["id"]
