"""Dependencies as named types, so route signatures read as what each route needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.auth import tenant_for_key
from app.config import Settings, get_settings
from app.db.session import session_factory


def get_db(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    with session_factory(settings)() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> str:
    return tenant_for_key(session, authorization)


TenantDep = Annotated[str, Depends(get_tenant)]
