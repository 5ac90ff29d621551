"""HEAD wherever GET is served (RFC 9110 §9.3.2): uptime monitors that probe with HEAD saw
405 on `/healthz` and the console. The GET handler runs and its body is dropped; the headers,
Content-Length included, are GET's."""

from __future__ import annotations


class HeadAsGet:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, without_body)


def install(app) -> None:
    app.add_middleware(HeadAsGet)
