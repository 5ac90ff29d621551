"""Query and persistence functions taking a Session; tenant-scoped lookups raise NotFoundError
for other tenants' rows, so a tenant cannot even learn that they exist."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.base import Base
from app.db.models import Dataset
from app.errors import NotFoundError

RowT = TypeVar("RowT", bound=Base)


def get_owned(session: Session, model: type[RowT], tenant_id: str, row_id: str, what: str) -> RowT:
    row = session.get(model, row_id)
    if row is None or getattr(row, "tenant_id", None) != tenant_id:
        raise NotFoundError(f"{what} '{row_id}' not found", code=f"{what}_not_found")
    return row


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, tenant_id, dataset_id, "dataset")


def page(
    session: Session,
    stmt,
    model: type[RowT],
    tenant_id: str,
    limit: int,
    offset: int = 0,
    after: str | None = None,
) -> tuple[list[RowT], int, str | None]:
    """One page of `stmt`'s rows, newest first, the count of all of them, and the id to pass
    as `after` for the next page (None on the last). `after` pages by key (the rows older
    than that one, read off the (tenant, created_at, id) index), `offset` by position (from
    there, with both)."""
    # count(*) over the same FROM and WHERE: a subquery of the rows would name every column,
    # task vectors included
    count = stmt.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    total = session.scalar(count)
    if after is not None:
        start = session.execute(
            select(model.created_at, model.id).where(
                model.tenant_id == tenant_id, model.id == after
            )  # fmt: skip
        ).first()
        if start is None:
            raise NotFoundError(
                f"after: '{after}' is not one of yours to start after", code="after_not_found"
            )
        stmt = stmt.where(
            or_(model.created_at < start[0], and_(model.created_at == start[0], model.id < after))
        )
    ordered = stmt.order_by(model.created_at.desc(), model.id.desc())
    rows = list(session.scalars(ordered.limit(limit + 1).offset(offset)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, int(total or 0), rows[-1].id if more else None
