"""Key and size checks before the body is read (issue 23).

FastAPI reads and parses a request's body (spooling a multipart upload to disk) before any
dependency runs, so a request with no key could send 150 MB and be told 401 only after it
was all received. This ASGI middleware runs first: a body-bearing `/v1` request without a
valid key is answered 401 at once, one whose Content-Length is over the route's cap 413 at
once, and one that streams past the cap (chunked, or a lying length) 413 as soon as it does.
Under overload a `/v1/infer` request of a tenant whose inputs already wait past the queue's
bound is refused (503 serving_queue_full) right after its key check, before its body is read:
a refusal must cost far less than an answer, or refusing does not shed load.
"""

from __future__ import annotations

import json

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from app.config import Settings
from app.db.session import session_factory
from app.errors import UnauthorizedError
from app.records.keys import tenant_for_key

BODY_METHODS = {b"POST", b"PUT", b"PATCH"}
FILE_ROUTES = ("/v1/datasets", "/v1/tasks", "/v1/tasks:batch")  # uploads: the upload cap
MULTIPART_SLACK = 64 * 1024  # part headers and small form fields around the file
INFER_ROUTES = ("/v1/infer",)  # where a tenant past its queue bound is refused early
TENANT_KEY = "kilotask.tenant_id"  # where a checked key's tenant waits for get_tenant


class _TooLarge(HTTPException):
    """Raised by the capped `receive`: an HTTPException, so that FastAPI's body parsing passes
    it on (it turns other errors into 400) and the error handlers answer 413."""


def body_limit(settings: Settings, path: str) -> int:
    """The most bytes a request to `path` may send."""
    if path.rstrip("/") in FILE_ROUTES:
        return int(settings.max_upload_mb * 2**20) + MULTIPART_SLACK
    return int(settings.max_body_mb * 2**20)


async def _send_error(send, status: int, code: str, message: str, headers=()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _tenant(self, authorization: str | None) -> str | None:
        """The key's tenant; None when the database cannot say (the route then answers)."""
        try:
            with session_factory(self.settings)() as session:
                return tenant_for_key(session, authorization)
        except SQLAlchemyError:
            return None

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"].encode() not in BODY_METHODS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = body_limit(self.settings, scope["path"])
        try:
            tenant = await anyio.to_thread.run_sync(
                self._tenant, headers.get(b"authorization", b"").decode("latin-1") or None
            )
        except UnauthorizedError as exc:
            await _send_error(send, 401, exc.code, exc.message, [(b"www-authenticate", b"Bearer")])
            return
        if tenant is not None:
            scope.setdefault("state", {})[TENANT_KEY] = tenant
            if scope["path"] in INFER_ROUTES:  # overloaded: refuse before the body is parsed
                serving = getattr(scope.get("app") and scope["app"].state, "serving", None)
                refusal = serving and serving.batcher.early_refusal(tenant)
                if refusal:
                    retry = [(b"retry-after", str(refusal.retry_after).encode())]
                    await _send_error(send, 503, refusal.code, refusal.message, retry)
                    return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, 413, "payload_too_large", _too_large(limit, scope["path"]))
            return
        received = 0
        started = False

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(413, _too_large(limit, scope["path"]))
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, "payload_too_large", _too_large(limit, scope["path"]))


def _too_large(limit: int, path: str) -> str:
    upload = path.rstrip("/") in FILE_ROUTES
    setting = "KILOTASK_MAX_UPLOAD_MB" if upload else "KILOTASK_MAX_BODY_MB"
    return f"the request body is over this route's limit of {limit / 2**20:.1f} MB ({setting})"


def install(app, settings: Settings) -> None:
    app.add_middleware(RequestGuard, settings=settings)
