"""`kilotask keys create | list | revoke` as a user runs them: in a fresh HOME before any
`serve` (the CLI makes the data folder and the schema itself), and a revoked key refused by
the API from the very next request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

KILOTASK = str(Path(sys.executable).parent / "kilotask")


@pytest.fixture()
def home(tmp_path) -> Path:
    """A fresh HOME with no ~/.kilotask, the data folder inside it (not yet made)."""
    return tmp_path / "home"


def kilotask(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILOTASK_")}
    env.update(HOME=str(home), KILOTASK_DATA_DIR=str(home / ".kilotask"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [KILOTASK, *args],
        env=env,
        cwd=home.parent,  # no .env from the repository
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kilotask: error: "), proc.stderr
    return lines[0]


def test_keys_create_works_before_the_first_serve(home):
    assert not home.exists()
    [created] = ok(kilotask(home, "keys", "create", "--tenant", "acme"))
    assert created["tenant"] == "acme" and created["api_key"].startswith("kt_")
    assert (home / ".kilotask" / "kilotask.db").is_file()
    [listed] = ok(kilotask(home, "keys", "list"))
    assert listed["tenant_id"] == created["tenant_id"]


def test_keys_list_and_revoke(home):
    acme = ok(kilotask(home, "keys", "create", "--tenant", "acme"))[0]["api_key"]
    ok(kilotask(home, "keys", "create", "--tenant", "acme"))
    ok(kilotask(home, "keys", "create", "--tenant", "beta"))

    rows = ok(kilotask(home, "keys", "list"))
    assert [r["tenant"] for r in rows] == ["acme", "acme", "beta"]
    for row in rows:
        assert set(row) == {"id", "tenant", "tenant_id", "created_at", "revoked_at"}
        assert row["id"].startswith("key_") and row["revoked_at"] is None
        assert row["created_at"].endswith("+00:00")
    everything = kilotask(home, "keys", "list").stdout
    assert acme not in everything and "kt_" not in everything and "hash" not in everything
    acme_rows = ok(kilotask(home, "keys", "list", "--tenant", "acme"))
    assert [r["id"] for r in acme_rows] == [r["id"] for r in rows[:2]]
    assert "beta-2" in one_error_line(kilotask(home, "keys", "list", "--tenant", "beta-2"))

    target = rows[0]["id"]
    [revoked] = ok(kilotask(home, "keys", "revoke", target))
    assert revoked["id"] == target and revoked["revoked_at"] and not revoked["already_revoked"]
    again = kilotask(home, "keys", "revoke", target)
    [second] = ok(again)
    assert second["already_revoked"] and second["revoked_at"] == revoked["revoked_at"]
    assert "already revoked" in again.stderr and "Traceback" not in again.stderr
    after = {r["id"]: r["revoked_at"] for r in ok(kilotask(home, "keys", "list"))}
    assert after == {rows[0]["id"]: revoked["revoked_at"], rows[1]["id"]: None, rows[2]["id"]: None}

    unknown = one_error_line(kilotask(home, "keys", "revoke", "key_doesnotexist"))
    assert "key_doesnotexist" in unknown


def test_a_revoked_key_gets_401_at_once(tmp_path, monkeypatch):
    from sqlalchemy import select

    from app.cli import main
    from app.config import Settings, get_settings
    from app.db.migrate import upgrade
    from app.db.models import ApiKey
    from app.db.session import session_factory
    from app.main import create_app
    from app.records.keys import create_key, hash_key

    url = f"sqlite:///{tmp_path / 'kilotask.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url)
    with session_factory(settings)() as session:
        _, key = create_key(session, "acme")
        _, other = create_key(session, "acme")
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    client = TestClient(create_app(settings))
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=auth).status_code == 200

    monkeypatch.setenv("KILOTASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILOTASK_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        listed = [json.loads(line)["id"] for line in _stdout(main, ["keys", "list"])]
        assert key_id in listed and len(listed) == 2
        assert json.loads(_stdout(main, ["keys", "revoke", key_id])[0])["id"] == key_id
    finally:
        get_settings.cache_clear()

    refused = client.get("/v1/jobs", headers=auth)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def _stdout(main, argv: list[str]) -> list[str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue().splitlines()
