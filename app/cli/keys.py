"""`kilotask keys create | list | revoke`: API keys, on a database made and migrated first."""

from __future__ import annotations

import argparse
import json
import sys

from app.cli.service import open_database


def keys(args: argparse.Namespace) -> int:
    """keys create | list | revoke, on a database made and migrated first (a fresh HOME works
    before the first `serve`)."""
    from sqlalchemy.exc import OperationalError

    from app.errors import KilotaskError

    name = args.tenant.strip() if getattr(args, "tenant", None) is not None else None
    if args.keys_command == "create" and (not name or len(name) > 100):
        print("kilotask: error: --tenant must be 1 to 100 characters", file=sys.stderr)
        return 2
    settings, sessions = open_database()
    try:
        with sessions() as session:
            return {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}[
                args.keys_command
            ](session, args, name)
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        where = settings.database_url.split("@")[-1]
        raise KilotaskError(f"cannot use the database {where}: {reason}") from None


def _keys_create(session, args: argparse.Namespace, name: str) -> int:
    from app.records.keys import create_key

    tenant, key = create_key(session, name, admin=args.admin)
    print(json.dumps({"tenant": tenant.name, "tenant_id": tenant.id, "api_key": key,
                      "admin": args.admin}))  # fmt: skip
    return 0


def _keys_list(session, args: argparse.Namespace, name: str | None) -> int:
    from sqlalchemy import select

    from app.db.models import Tenant
    from app.records.keys import list_keys

    if name is not None and session.scalar(select(Tenant.id).where(Tenant.name == name)) is None:
        print(f"kilotask: error: no tenant named {name!r}", file=sys.stderr)
        return 2
    for key, tenant in list_keys(session, name):
        print(json.dumps({"id": key.id, "tenant": tenant.name, "tenant_id": tenant.id,
                          "created_at": _timestamp(key.created_at),
                          "revoked_at": _timestamp(key.revoked_at)}))  # fmt: skip
    return 0


def _keys_revoke(session, args: argparse.Namespace, name: None) -> int:
    from app.records.keys import revoke_key

    key, newly = revoke_key(session, args.key_id.strip())
    revoked_at = _timestamp(key.revoked_at)
    if not newly:
        print(f"kilotask: {key.id} was already revoked (at {revoked_at})", file=sys.stderr)
    print(json.dumps({"id": key.id, "revoked_at": revoked_at, "already_revoked": not newly}))
    return 0


def _timestamp(when) -> str | None:
    """ISO 8601 in UTC (SQLite hands timestamps back without their zone)."""
    from datetime import UTC

    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
