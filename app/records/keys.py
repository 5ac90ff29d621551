"""API keys: `kt_` + 32 random bytes; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Tenant, utcnow
from app.errors import NotFoundError, UnauthorizedError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str, admin: bool = False) -> tuple[Tenant, str]:
    """Create (or reuse) the tenant and give it a new key (`admin`: an operator's, which sees
    the whole process's serving state). Returns the key once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = "kt_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), admin=admin))
    session.commit()
    return tenant, key


def is_admin_key(session: Session, authorization: str | None) -> bool:
    """Whether the (already valid) key of this header is an operator's."""
    key = [*(authorization or "").split(None, 1), ""][1].strip()
    return bool(session.scalar(select(ApiKey.admin).where(ApiKey.key_hash == hash_key(key))))


def tenant_for_key(session: Session, authorization: str | None) -> str:
    """The tenant id behind an `Authorization: Bearer <key>` header, or UnauthorizedError. The
    scheme is case-insensitive (RFC 9110) and spaces around the key do not matter."""
    scheme, key = [*(authorization or "").split(None, 1), "", ""][:2]
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise UnauthorizedError(
            "send an API key as 'Authorization: Bearer <key>' "
            "(create one with: kilotask keys create --tenant NAME)"
        )
    tenant_id = session.scalar(  # the column alone: no ORM instance (every request asks)
        select(ApiKey.tenant_id).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
    )
    if tenant_id is None:
        raise UnauthorizedError("this API key is not valid (unknown or revoked)")
    return tenant_id


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, Tenant]]:
    """Every API key (of one tenant if named) with its tenant, oldest first. Keys themselves
    are never stored, so never listed."""
    query = select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    rows = session.execute(query.order_by(ApiKey.created_at, ApiKey.id))
    return [(key, tenant) for key, tenant in rows]


def revoke_key(session: Session, key_id: str) -> tuple[ApiKey, bool]:
    """Revoke the key `key_id` (`key_…`) at once: `tenant_for_key` refuses it from the next
    request on. Returns (key, newly revoked); revoking twice keeps the first time. NotFoundError
    for an unknown id."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"no API key {key_id!r} (see: kilotask keys list)")
    return key, result.rowcount == 1
