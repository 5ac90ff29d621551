"""OpenAPI documentation of the error envelope: `responses=error_responses(...)` on a route
documents each status it can answer with the ErrorBody schema (and its headers), so clients and
the schemathesis fuzz test (tests/integration/test_fuzz.py) know every answer in advance."""

from __future__ import annotations

from typing import Any

from app.schemas.common import ErrorBody

AUTHED = (401, 503)  # every route behind a key: no or bad key; database (or queue) unreachable

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}

ERRORS: dict[int, tuple[str, dict]] = {
    400: ("Malformed request: a body that does not parse as its content type, or a bad file", {}),
    401: (
        "No API key, or not a valid one: send `Authorization: Bearer <key>`",
        {
            "WWW-Authenticate": {
                "description": "the scheme to use: Bearer",
                "schema": {"type": "string"},
            }
        },
    ),
    404: ("No such resource for this tenant (other tenants' resources are 404 too)", {}),
    409: ("The resource is in a state that does not allow this now", {}),
    413: ("The upload is over the size limit", {}),
    422: ("Invalid input: the message says which field and what to fix", {}),
    429: ("A per-tenant limit is reached: retry after Retry-After seconds", RETRY_AFTER),
    503: ("The database or the job queue is unreachable: retry after Retry-After", RETRY_AFTER),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses, each with the error envelope as its body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, headers = ERRORS[code]
        out[code] = {"model": ErrorBody, "description": description}
        if headers:
            out[code]["headers"] = headers
    return out


def binary_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 whose body is a file, not JSON."""
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        }
    }
