"""Liveness with real checks: the database answers a query, the broker answers a ping, and
(under `kilotask serve`) a local worker runs or is being restarted."""

from __future__ import annotations

import os
import shutil
import tempfile

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep, SettingsDep
from app.jobs import supervisor
from app.schemas.health import Health

router = APIRouter(tags=["health"])


def _broker_ok(url: str) -> bool:
    if url.startswith("redis"):
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    return True  # the embedded filesystem broker lives in this process's data folder


def _worker(grace_s: float) -> tuple[dict | None, bool]:
    """The supervised worker's state, and whether that is healthy: a worker that died is
    'restarting' (still healthy) until it has been gone for `grace_s`, then 'down'."""
    sup = supervisor.current()
    if sup is None:
        return None, True
    status = sup.status()
    if status["state"] != "up" and status["down_for_s"] >= grace_s:
        status["state"] = "down"
    return status, status["state"] in ("up", "restarting")


def _storage(settings) -> str:
    """Whether the data folder (SQLite, the embedded broker, checkpoints) can take writes: free
    space above KILOTASK_HEALTH_MIN_FREE_MB and a small file written. A full disk answered
    uploads 503 while this said ok."""
    try:
        free_mb = shutil.disk_usage(settings.data_dir).free / 2**20
        if free_mb < settings.health_min_free_mb:
            floor = settings.health_min_free_mb
            return f"error: {free_mb:.0f} MB free in the data folder, under {floor:g} MB"
        with tempfile.TemporaryFile(dir=settings.data_dir) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        return "ok"
    except OSError as exc:
        return f"error: cannot write to the data folder ({exc.strerror})"


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "a check failed (the body says which)"}},
)
def healthz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    checks: dict = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not healthy"; the message says which
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        checks["broker"] = "ok" if _broker_ok(settings.broker_url) else "error"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    checks["storage"] = _storage(settings)
    worker, worker_ok = _worker(settings.worker_down_grace_s)
    if worker is not None:
        checks["worker"] = worker
    healthy = worker_ok and all(checks[k] == "ok" for k in ("database", "broker", "storage"))
    return JSONResponse({"status": "ok" if healthy else "error", **checks}, 200 if healthy else 503)
