"""Training jobs: create (idempotent), list, read, events, cancel. Queued by task name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.api.deps import IdempotencyKey, PageDep, ResourceId, SessionDep, SettingsDep, TenantDep
from app.api.limits import check_active_jobs
from app.api.offload import offload
from app.api.openapi import AUTHED, error_responses
from app.api.routes.models import (
    check_max_length,
    check_model_allowed,
    method_dim_range,
    model_info,
)
from app.db.models import Job, JobEvent
from app.db.repo import get_dataset, get_owned, page
from app.errors import InvalidInputError
from app.jobs.service import cancel_job, create_job, enqueue_or_fail, find_idempotent, request_hash
from app.schemas.jobs import (
    JobCreate,
    JobEventPublic,
    JobEventsPage,
    JobPublic,
    JobsPage,
    JobStatus,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_EVENT_ID = 2**31 - 1  # job_event.id is a 32-bit INTEGER column


def _check_dim(body: JobCreate, model: str) -> int:
    info = model_info(model)
    if body.method == "full":
        if body.options():
            raise InvalidInputError(
                f"option(s) {', '.join(sorted(body.options()))} do not apply to full fine-tuning",
                code="invalid_options",
            )
        return info.num_parameters
    low, high = method_dim_range(model, body.method, body.seed, body.options())
    if not low <= body.dim <= high:
        raise InvalidInputError(
            f"dim must be in [{low}, {high}] for {body.method} on '{model}', got {body.dim}",
            code="invalid_dim",
        )
    return body.dim


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(*AUTHED, 400, 404, 422, 429),
)
async def submit_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Validation loads the model's facts and the data set: off the event loop."""
    return await offload(tenant_id, _submit, body, session, settings, tenant_id, idempotency_key)


def _submit(body: JobCreate, session, settings, tenant_id: str, idempotency_key) -> JSONResponse:
    digest = request_hash(body.model_dump(mode="json"))
    existing = find_idempotent(session, tenant_id, idempotency_key, digest)
    if existing is not None:
        return JSONResponse(JobPublic.of(existing).model_dump(mode="json"), 202)
    check_active_jobs(session, settings, tenant_id)
    model = check_model_allowed(body.model or settings.default_model, settings)
    dim = _check_dim(body, model)
    check_max_length(model, body.hyperparameters.max_length)
    from app.records.datasets import check_task_type  # imports torch, as loading the model did

    train_labels = get_dataset(session, tenant_id, body.train_dataset).label_counts
    check_task_type(train_labels, body.task, body.hyperparameters.metric, settings.max_labels)
    fields = dict(
        model=model,
        method=body.method,
        task_type=body.task,
        dim=dim,
        seed=body.seed,
        train_dataset_id=body.train_dataset,
        eval_dataset_id=body.eval_dataset,
        hyperparameters=body.hyperparameters.model_dump(exclude_none=True),
        options=body.options() or None,
    )
    job, created = create_job(
        session, tenant_id, fields, idempotency_key, digest, settings.tenant_max_active_jobs
    )
    if created:
        enqueue_or_fail(session, settings, job)
    return JSONResponse(JobPublic.of(job).model_dump(mode="json"), 202)


@router.get("", response_model=JobsPage, responses=error_responses(*AUTHED, 404, 422))
def list_jobs(
    session: SessionDep, tenant_id: TenantDep, q: PageDep, status: JobStatus | None = None
) -> JobsPage:
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(Job.status == status)
    rows, total, next_after = page(session, stmt, Job, tenant_id, q.limit, q.offset, q.after)
    return JobsPage(data=[JobPublic.of(j) for j in rows], total=total, limit=q.limit,
                    offset=q.offset, after=q.after, next_after=next_after)  # fmt: skip


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(*AUTHED, 404, 422))
def read_job(session: SessionDep, tenant_id: TenantDep, job_id: ResourceId) -> JobPublic:
    return JobPublic.of(get_owned(session, Job, tenant_id, job_id, "job"))


@router.get(
    "/{job_id}/events", response_model=JobEventsPage, responses=error_responses(*AUTHED, 404, 422)
)
def job_events(
    session: SessionDep,
    tenant_id: TenantDep,
    job_id: ResourceId,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="only events with a larger id")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JobEventsPage:
    get_owned(session, Job, tenant_id, job_id, "job")
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return JobEventsPage(data=[JobEventPublic.model_validate(r) for r in rows])


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses=error_responses(*AUTHED, 404, 409, 422)
)
def cancel(session: SessionDep, tenant_id: TenantDep, job_id: ResourceId) -> JobPublic:
    return JobPublic.of(cancel_job(session, tenant_id, job_id))
