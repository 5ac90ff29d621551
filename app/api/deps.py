"""Dependencies as named types, so route signatures read as what each route needs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from app.api.guard import TENANT_KEY
from app.config import Settings, get_settings
from app.db.session import session_factory
from app.records.keys import tenant_for_key
from app.schemas.common import ID_PATTERN


async def current_settings() -> Settings:
    """The process's settings. `async` so that FastAPI resolves it on the event loop: a plain
    `def` dependency costs a worker-thread round trip on every request (create_app overrides
    it with the settings it was given)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session_factory(settings)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


# Declares the `bearerAuth` scheme in OpenAPI; the header itself is read by tenant_for_key,
# which accepts the scheme in any case (RFC 9110) and answers 401 in the error envelope.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="an API key: `Authorization: Bearer kt_…` (kilotask keys create --tenant NAME)",
)


def _tenant_for(settings: Settings, authorization: str | None) -> str:
    with session_factory(settings)() as session:
        return tenant_for_key(session, authorization)


async def get_tenant(
    settings: SettingsDep,
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The key's tenant: checked by the guard before the body (body-bearing requests), else
    looked up here, in a worker thread (never on the event loop)."""
    checked = request.scope.get("state", {}).get(TENANT_KEY)
    if checked is not None:
        return checked
    authorization = request.headers.get("authorization")
    return await anyio.to_thread.run_sync(_tenant_for, settings, authorization)


TenantDep = Annotated[str, Depends(get_tenant)]

ResourceId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="an id as returned by the API (letters, digits, '_', '.', '-')",
    ),
]

IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"  # visible ASCII, no spaces


def _visible_key(key: str | None) -> str | None:
    if key is not None and not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise ValueError(
            "Idempotency-Key must be 1-255 visible ASCII characters (no spaces or control "
            "characters), e.g. a UUID; omit the header to submit without one"
        )
    return key


# Typed `str` (the route defaults it to None) so OpenAPI documents a plain string header.
IdempotencyKey = Annotated[
    str,
    Header(
        description="the same key and body give back the same job; another body is 422",
        json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN, "minLength": 1, "maxLength": 255},
    ),
    AfterValidator(_visible_key),
]


def _query_names(route) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = getattr(route, "_kilotask_query_names", None)
    if names is None:
        found, todo = set(), [route.dependant]
        while todo:
            dependant = todo.pop()
            found.update(p.alias for p in dependant.query_params)
            todo.extend(dependant.dependencies)
        names = route._kilotask_query_names = frozenset(found)
    return names


async def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a mistake (a typo like `ofset=40` would
    otherwise be ignored silently): 422 naming it and the ones the route takes."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    known = _query_names(route)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        from app.errors import InvalidInputError

        takes = ", ".join(sorted(known)) or "none"
        raise InvalidInputError(
            f"unknown query parameter(s) {', '.join(repr(u) for u in unknown)}; this route "
            f"takes: {takes}",
            code="unknown_query_parameter",
        )


MAX_OFFSET = 10**9


@dataclass(frozen=True)
class PageQuery:
    limit: int
    offset: int
    after: str | None


def page_query(
    limit: Annotated[int, Query(ge=1, le=200, description="rows per page")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")] = 0,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=ID_PATTERN,
            description="the rows after this id (a page's `next_after`): paging by key, "
            "steady under inserts and as fast on the last page as the first (404 when the id "
            "is not one of yours; offset then counts from there)",
        ),
    ] = None,
) -> PageQuery:
    return PageQuery(limit, offset, after)


PageDep = Annotated[PageQuery, Depends(page_query)]
