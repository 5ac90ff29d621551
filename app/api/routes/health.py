"""Liveness with real checks: the database answers a query and the broker answers a ping."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep, SettingsDep

router = APIRouter(tags=["health"])


def _broker_ok(url: str) -> bool:
    if url.startswith("redis"):
        import redis

        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    return True  # the embedded filesystem broker lives in this process's data folder


@router.get("/healthz")
def healthz(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not healthy"; the message says which
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        checks["broker"] = "ok" if _broker_ok(settings.broker_url) else "error"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if healthy else "error", **checks}, 200 if healthy else 503)
