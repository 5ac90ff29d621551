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
