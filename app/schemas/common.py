from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC, so say so."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # ids look like ds_…, job_…, task_…

# A reference to a resource by the id the API gave it: never empty, never arbitrary text.
ResourceRef = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=ID_PATTERN, description="an id from this API"),
]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable snake_case code, e.g. validation_error, not_found")
    message: str = Field(description="what went wrong and what to fix")


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


class PageInfo(BaseModel):
    """Where a list page sits: `total` rows match; page on with `after` = `next_after` (by
    key: steady under inserts, as fast on the last page as on the first) or with `offset`."""

    total: int
    limit: int
    offset: int
    after: str | None = None
    next_after: str | None = Field(
        None, description="pass as `after` for the next page; null on the last page"
    )
