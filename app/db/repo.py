"""Query and persistence functions taking a Session; tenant-scoped lookups raise NotFoundError
for other tenants' rows, so a tenant cannot even learn that they exist."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func
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


def page(session: Session, stmt, limit: int, offset: int) -> tuple[list, int]:
    """One page of `stmt`'s rows and the count of all of them (list routes)."""
    # count(*) over the same FROM and WHERE: a subquery of the rows would name every column,
    # task vectors included
    count = stmt.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    total = session.scalar(count)
    return list(session.scalars(stmt.limit(limit).offset(offset))), int(total or 0)
