"""Every error leaves the API as {"error": {"code": ..., "message": ...}}. Statuses are decided
here and only here, by walking the error's class hierarchy."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    eng.ArtifactFormatError: 400,
    eng.DataFormatError: 422,
    eng.BaseModelMismatchError: 422,
    eng.SpecVersionError: 422,
    eng.SubspaceConfigError: 422,
    eng.ModelNotFoundError: 422,
}


def envelope(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(svc.KilotaskError)
    @app.exception_handler(eng.EngineError)
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": "5"}
        return envelope(status, exc.code, getattr(exc, "message", str(exc)), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else err.get("msg", "invalid"))
        return envelope(422, "validation_error", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return envelope(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error, request %s %s id=%s", request.method, request.url, request_id
        )
        return envelope(500, "internal_error", f"internal error (request id {request_id})")
