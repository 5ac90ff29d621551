"""Upload and read datasets. The file is stored in the database (not a path), so a worker on
another machine can read it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from sqlalchemy import func, or_, select

from app.api.deps import PageDep, ResourceId, SessionDep, SettingsDep, TenantDep
from app.api.limits import check_storage
from app.api.offload import offload
from app.api.openapi import AUTHED, error_responses
from app.db.models import Dataset, Job
from app.db.repo import get_dataset, page
from app.engine.data import ColumnSpec
from app.errors import ConflictError, PayloadTooLargeError
from app.records.datasets import inspect_upload
from app.schemas.datasets import DatasetPublic, DatasetsPage

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await file.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"upload is over the {limit / 2**20:.0f} MB limit (KILOTASK_MAX_UPLOAD_MB)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    responses=error_responses(*AUTHED, 400, 413, 422),
)
async def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    file: Annotated[UploadFile, File(description="CSV, TSV or JSONL with a header row")],
    text_column: Annotated[str | None, Form(max_length=255)] = None,
    text_pair_column: Annotated[str | None, Form(max_length=255)] = None,
    label_column: Annotated[str | None, Form(max_length=255)] = None,
) -> Dataset:
    content = await _read_limited(file, int(settings.max_upload_mb * 2**20))
    columns = ColumnSpec(text_column, text_pair_column, label_column)
    return await offload(
        tenant_id, _store, session, tenant_id, content, file.filename or "", columns,
        settings.max_rows, settings.tenant_max_storage_mb,
    )  # fmt: skip


def _store(session, tenant_id: str, content: bytes, filename: str, columns: ColumnSpec,
           max_rows: int, max_storage_mb: float) -> Dataset:  # fmt: skip
    """Parse, hash and store an upload (seconds for a large file: never on the event loop)."""
    summary = inspect_upload(content, filename, columns, max_rows)
    check_storage(session, tenant_id, len(content), max_storage_mb)
    row = Dataset(
        tenant_id=tenant_id,
        filename=filename,
        content=content,
        sha256=summary.sha256,
        rows=summary.rows,
        columns=summary.columns,
        text_column=summary.resolved.text,
        text_pair_column=summary.resolved.text_pair,
        label_column=summary.resolved.label,
        label_counts=summary.label_counts,
    )
    session.add(row)
    session.commit()
    return row


@router.get("", response_model=DatasetsPage, responses=error_responses(*AUTHED, 404, 422))
def list_datasets(session: SessionDep, tenant_id: TenantDep, q: PageDep) -> DatasetsPage:
    """The tenant's data sets, newest first (their contents are never loaded here)."""
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    rows, total, next_after = page(session, stmt, Dataset, tenant_id, q.limit, q.offset, q.after)
    return DatasetsPage(data=[DatasetPublic.model_validate(r) for r in rows], total=total,
                        limit=q.limit, offset=q.offset, after=q.after,
                        next_after=next_after)  # fmt: skip


@router.get(
    "/{dataset_id}", response_model=DatasetPublic, responses=error_responses(*AUTHED, 404, 422)
)
def read_dataset(session: SessionDep, tenant_id: TenantDep, dataset_id: ResourceId) -> Dataset:
    return get_dataset(session, tenant_id, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(*AUTHED, 404, 409, 422),
)
def delete_dataset(session: SessionDep, tenant_id: TenantDep, dataset_id: ResourceId) -> Response:
    """Frees its storage; refused (409) while a job names it (a job's data stays readable)."""
    row = get_dataset(session, tenant_id, dataset_id)
    uses = session.scalar(
        select(func.count()).where(
            or_(Job.train_dataset_id == dataset_id, Job.eval_dataset_id == dataset_id)
        )
    )
    if uses:
        raise ConflictError(
            f"data set {dataset_id} is named by {uses} job(s); a job keeps its data, so it "
            "cannot be deleted", code="dataset_in_use",
        )  # fmt: skip
    session.delete(row)
    session.commit()
    return Response(status_code=204)
