"""API keys: `kt_` + 32 random bytes; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Tenant
from app.errors import UnauthorizedError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Create (or reuse) the tenant and give it a new key. Returns the key once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = "kt_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key)))
    session.commit()
    return tenant, key


def tenant_for_key(session: Session, authorization: str | None) -> str:
    """The tenant id behind an `Authorization: Bearer <key>` header, or UnauthorizedError."""
    if not authorization or not authorization.startswith("Bearer "):
        raise UnauthorizedError(
            "send an API key as 'Authorization: Bearer <key>' "
            "(create one with: kilotask keys create --tenant NAME)"
        )
    row = session.scalar(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(authorization[7:].strip()), ApiKey.revoked_at.is_(None)
        )
    )
    if row is None:
        raise UnauthorizedError("this API key is not valid (unknown or revoked)")
    return row.tenant_id
