"""Every error leaves the API as {"error": {"code": ..., "message": ...}}. Statuses are decided
here and only here, by walking the error's class hierarchy."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors as svc
from app.engine import errors as eng

log = logging.getLogger("kilotask.api")

STATUS = {
    svc.NotFoundError: 404,
    svc.ConflictError: 409,
    svc.InvalidStateError: 409,
    svc.IdempotencyMismatchError: 422,
    svc.UnauthorizedError: 401,
    svc.PayloadTooLargeError: 413,
    svc.InvalidInputError: 422,
    svc.ServiceBusyError: 503,
    svc.RateLimitedError: 429,
    eng.ArtifactFormatError: 400,
    eng.DataFormatError: 422,
    eng.BaseModelMismatchError: 422,
    eng.SpecVersionError: 422,
    eng.SubspaceConfigError: 422,
    eng.ModelNotFoundError: 422,
}


HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
DB_RETRY_AFTER_S = 5


def envelope(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def is_database_down(exc: sa.SQLAlchemyError) -> bool:
    """Connection-level failures (server down, connection lost, pool exhausted, SQLite locked):
    worth retrying, so 503. Anything else from the database is a bug, so 500."""
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
        return True
    return isinstance(exc, sa.DBAPIError) and exc.connection_invalidated


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def allowed_methods(request: Request, routed: str) -> str:
    """The Allow header of a 405: every method documented for this path, plus those the router
    named (it names only the first route's, and /v1/tasks has GET and POST in two routes)."""
    methods = {m.strip().upper() for m in routed.split(",") if m.strip()}
    path = request.scope.get("path", "")
    for template, item in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in item if m in HTTP_METHODS}
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(svc.KilotaskError)
    @app.exception_handler(eng.EngineError)
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": str(getattr(exc, "retry_after", None) or DB_RETRY_AFTER_S)}
        if isinstance(exc, svc.RateLimitedError):
            headers = {"Retry-After": str(exc.retry_after)}
        return envelope(status, exc.code, getattr(exc, "message", str(exc)), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else err.get("msg", "invalid"))
        return envelope(422, "validation_error", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = (
                "the request body does not parse as its Content-Type; send JSON "
                "(application/json) or a form (multipart/form-data) as the API documents"
            )
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, headers.get("Allow", ""))
            message = f"{request.method} is not allowed here; use {headers['Allow']}"
        return envelope(exc.status_code, code, message, headers or None)

    @app.exception_handler(sa.SQLAlchemyError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, sa.SQLAlchemyError) and is_database_down(exc):
            reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]
            log.warning("database unavailable: %s %s: %s", request.method, request.url.path, reason)
            return envelope(
                503,
                "database_unavailable",
                "the database is unreachable; try again shortly",
                {"Retry-After": str(DB_RETRY_AFTER_S)},
            )
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error, request %s %s id=%s", request.method, request.url, request_id
        )
        return envelope(500, "internal_error", f"internal error (request id {request_id})")
