"""Intrinsic-dimension (d90) searches: a job kind run by the same workers as training."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import IdempotencyKey, ResourceId, SessionDep, SettingsDep, TenantDep
from app.api.limits import check_active_jobs
from app.api.offload import offload
from app.api.openapi import AUTHED, binary_response, error_responses
from app.api.routes.models import check_max_length, check_model_allowed, method_dim_range
from app.db.models import Job
from app.db.repo import get_dataset, get_owned
from app.errors import InvalidInputError, InvalidStateError, NotFoundError
from app.jobs.service import create_job, enqueue_or_fail, find_idempotent, request_hash
from app.schemas.intrinsic import D90Create, D90Public

router = APIRouter(prefix="/v1/intrinsic-dimension", tags=["intrinsic dimension"])


def _check_range(body: D90Create, model: str) -> None:
    low, high = method_dim_range(model, body.method, body.seed, body.options())
    if max(body.min_d, low) >= min(body.max_d, high):
        raise InvalidInputError(
            f"no d to search: {body.method} on '{model}' needs {low} <= d <= "
            f"{high}, and min_d < max_d within that range",
            code="invalid_dim",
        )


@router.post(
    "",
    status_code=202,
    response_model=D90Public,
    responses=error_responses(*AUTHED, 400, 404, 409, 422, 429),
)
async def submit_search(
    body: D90Create,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Validation loads the model's facts and the data set: off the event loop."""
    return await offload(tenant_id, _submit, body, session, settings, tenant_id, idempotency_key)


def _submit(body: D90Create, session, settings, tenant_id: str, idempotency_key) -> JSONResponse:
    digest = request_hash({"kind": "d90"} | body.model_dump(mode="json"))
    existing = find_idempotent(session, tenant_id, idempotency_key, digest)
    if existing is not None:
        return JSONResponse(D90Public.of(existing).model_dump(mode="json"), 202)
    check_active_jobs(session, settings, tenant_id)
    model = check_model_allowed(body.model or settings.default_model, settings)
    _check_range(body, model)
    check_max_length(model, body.max_length)
    from app.records.datasets import check_task_type  # imports torch, as loading the model did

    check_task_type(
        get_dataset(session, tenant_id, body.train_dataset).label_counts,
        body.task,
        body.metric,
        settings.max_labels,
    )
    if body.reuse_from is not None:
        _check_reuse_source(_search(session, tenant_id, body.reuse_from), body, model)
    search = body.model_dump(
        exclude={
            "model",
            "train_dataset",
            "eval_dataset",
            "seed",
            "rank",
            "targets",
            "scales",
            "said_groups",
            "task",
        }  # fmt: skip
    )
    search["metric"] = body.metric or ("pearson" if body.task == "regression" else "accuracy")
    fields = dict(
        kind="d90",
        model=model,
        method=body.method,
        task_type=body.task,
        dim=0,
        seed=body.seed,
        train_dataset_id=body.train_dataset,
        eval_dataset_id=body.eval_dataset,
        hyperparameters=search,
        options=body.options() or None,
    )
    job, created = create_job(
        session, tenant_id, fields, idempotency_key, digest, settings.tenant_max_active_jobs
    )
    if created:
        enqueue_or_fail(session, settings, job)
    return JSONResponse(D90Public.of(job).model_dump(mode="json"), 202)


RUN_FIELDS = ("budget_steps", "batch_size", "max_length", "metric", "full_lr_grid", "precision")


def _check_reuse_source(source: Job, body: D90Create, model: str) -> None:
    """A run of the source is only this search's run if it was trained the same way on the
    same data, and there must be something to take."""
    ours = {k: getattr(body, k) for k in RUN_FIELDS}
    ours["metric"] = body.metric or ("pearson" if body.task == "regression" else "accuracy")
    ours |= dict(model=model, seed=body.seed, train=body.train_dataset, eval=body.eval_dataset)
    ours["task"] = body.task or "classification"
    ours["options"] = body.options()  # method options only matter for runs of the method
    theirs = {k: source.hyperparameters.get(k) for k in RUN_FIELDS}
    theirs |= dict(
        model=source.model,
        seed=source.seed,
        train=source.train_dataset_id,
        eval=source.eval_dataset_id,
        options=(source.options or {}) if source.method == body.method else body.options(),
        task=source.task_type or "classification",
    )
    differ = sorted(k for k in ours if ours[k] != theirs[k])
    if differ:
        raise InvalidInputError(
            f"reuse_from: search {source.id} trained with other {', '.join(differ)}; reusing "
            "runs needs the same datasets, model, seed, task, budget_steps, batch_size, "
            "max_length, metric, full_lr_grid, precision and (for the same method) method "
            "options",
            code="reuse_mismatch",
        )
    runs = json.loads(source.checkpoint or b"{}").get("runs", {})
    if not any(key.split(":")[0] in ("full", body.method) for key in runs):
        raise InvalidStateError(
            f"reuse_from: search {source.id} has not finished a full or {body.method} run "
            "yet; submit again once its full fine-tuning has finished",
            code="reuse_not_ready",
        )


def _search(session, tenant_id: str, job_id: str) -> Job:
    job = get_owned(session, Job, tenant_id, job_id, "search")
    if job.kind != "d90":
        raise NotFoundError(
            f"{job_id} is a training job, not a d90 search; see /v1/jobs/{job_id}",
            code="search_not_found",
        )
    return job


@router.get("/{job_id}", response_model=D90Public, responses=error_responses(*AUTHED, 404, 422))
def read_search(session: SessionDep, tenant_id: TenantDep, job_id: ResourceId) -> D90Public:
    """The search and its curve so far as JSON (events: /v1/jobs/{id}/events)."""
    return D90Public.of(_search(session, tenant_id, job_id))


@router.get(
    "/{job_id}/curve.png",
    response_class=Response,
    responses=binary_response("image/png", "the curve as a PNG image")
    | error_responses(*AUTHED, 404, 422),
)
def curve_png(session: SessionDep, tenant_id: TenantDep, job_id: ResourceId) -> Response:
    """Metric against d with the 90 % line, like the paper's Figure 1 (partial while running)."""
    from app.search.curve import curve_bytes

    job = _search(session, tenant_id, job_id)
    png = curve_bytes(job.metrics or {}, job.hyperparameters.get("metric", "accuracy"))
    return Response(png, media_type="image/png")
