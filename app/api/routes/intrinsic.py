"""Intrinsic-dimension (d90) searches: a job kind run by the same workers as training."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.routes.models import model_info
from app.db.models import Job
from app.db.repo import get_owned
from app.errors import InvalidInputError, NotFoundError
from app.jobs import create_job, enqueue_or_fail, find_idempotent, request_hash
from app.schemas.intrinsic import D90Create, D90Public

router = APIRouter(prefix="/v1/intrinsic-dimension", tags=["intrinsic dimension"])


async def _check_range(body: D90Create, model: str) -> None:
    info = await run_in_threadpool(model_info, model)
    low = info.num_tensors + 1 if body.method == "said" else 1
    if max(body.min_d, low) >= min(body.max_d, info.num_parameters):
        raise InvalidInputError(
            f"no d to search: {body.method} on '{model}' needs {low} <= d <= "
            f"{info.num_parameters}, and min_d < max_d within that range",
            code="invalid_dim",
        )


@router.post("", status_code=202, response_model=D90Public)
async def submit_search(
    body: D90Create,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    digest = request_hash({"kind": "d90"} | body.model_dump(mode="json"))
    existing = find_idempotent(session, tenant_id, idempotency_key, digest)
    if existing is not None:
        return JSONResponse(D90Public.of(existing).model_dump(mode="json"), 202)
    model = body.model or settings.default_model
    await _check_range(body, model)
    search = body.model_dump(exclude={"model", "train_dataset", "eval_dataset", "seed"})
    fields = dict(
        kind="d90",
        model=model,
        method=body.method,
        dim=0,
        seed=body.seed,
        train_dataset_id=body.train_dataset,
        eval_dataset_id=body.eval_dataset,
        hyperparameters=search,
    )
    job = create_job(session, tenant_id, fields, idempotency_key, digest)
    enqueue_or_fail(session, settings, job)
    return JSONResponse(D90Public.of(job).model_dump(mode="json"), 202)


def _search(session, tenant_id: str, job_id: str) -> Job:
    job = get_owned(session, Job, tenant_id, job_id, "search")
    if job.kind != "d90":
        raise NotFoundError(
            f"{job_id} is a training job, not a d90 search; see /v1/jobs/{job_id}",
            code="search_not_found",
        )
    return job


@router.get("/{job_id}", response_model=D90Public)
def read_search(session: SessionDep, tenant_id: TenantDep, job_id: str) -> D90Public:
    """The search and its curve so far as JSON (events: /v1/jobs/{id}/events)."""
    return D90Public.of(_search(session, tenant_id, job_id))


@router.get("/{job_id}/curve.png", response_class=Response)
def curve_png(session: SessionDep, tenant_id: TenantDep, job_id: str) -> Response:
    """Metric against d with the 90 % line, like the paper's Figure 1 (partial while running)."""
    from app.d90 import curve_bytes

    job = _search(session, tenant_id, job_id)
    png = curve_bytes(job.metrics or {}, job.hyperparameters.get("metric", "accuracy"))
    return Response(png, media_type="image/png")
