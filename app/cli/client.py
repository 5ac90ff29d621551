"""A small HTTP client for a running kilotask server (stdlib only), used by `kilotask predict
--server` and `kilotask import`."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request


class ServerError(Exception):
    """The server refused the request or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when the server answered


class KilotaskClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = 120.0) -> None:
        if not api_key:
            raise ServerError("--server needs an API key: pass --api-key or set KILOTASK_API_KEY")
        self.url, self.key, self.timeout = url.rstrip("/"), api_key, timeout

    def _call(
        self, method: str, path: str, body: dict | None = None, raw: tuple[bytes, str] | None = None
    ) -> dict:
        data, kind = raw or (
            None if body is None else json.dumps(body).encode(),
            "application/json",
        )
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": kind},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise ServerError(f"server answered {exc.code}: {message}", exc.code) from exc
        except urllib.error.URLError as exc:
            raise ServerError(f"cannot reach {self.url}: {exc.reason}") from exc

    def task(self, task_id: str) -> dict:
        return self._call("GET", f"/v1/tasks/{task_id}")

    def infer(
        self, task_id: str, texts: list[str], pairs: list[str] | None, batch_size: int
    ) -> list[dict]:
        """One output per row, as /v1/infer gives it without index and task ({"label",
        "scores"}, or {"score"} for regression), sent in requests of `batch_size` rows."""
        rows: list[dict] = []
        for lo in range(0, len(texts), batch_size):
            inputs = [{"task": task_id, "text": t or " "} for t in texts[lo : lo + batch_size]]
            if pairs is not None:
                for item, pair in zip(inputs, pairs[lo : lo + batch_size], strict=True):
                    item["text_pair"] = pair
            out = self._call("POST", "/v1/infer", {"inputs": inputs})["outputs"]
            rows.extend({k: v for k, v in o.items() if k not in ("index", "task")} for o in out)
        return rows

    def import_tasks(self, files: list[tuple[str, bytes]]) -> dict:
        """POST /v1/tasks:batch with these (file name, bytes): the server's per-file answers."""
        boundary = secrets.token_hex(16)
        parts = []
        for name, blob in files:
            safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            )
            parts += [head.encode(), blob, b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        kind = f"multipart/form-data; boundary={boundary}"
        return self._call("POST", "/v1/tasks:batch", raw=(b"".join(parts), kind))
