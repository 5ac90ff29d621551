"""Multi-task inference from one shared base: any mix of the tenant's tasks in one call."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from app.api.deps import ResourceId, SessionDep, SettingsDep, TenantDep
from app.api.limits import InferenceLimit
from app.api.offload import offload
from app.api.openapi import AUTHED, error_responses
from app.api.serving_state import serving_runtime, task_lookup
from app.db.models import Task
from app.db.repo import get_owned
from app.engine.artifact import TaskArtifact
from app.errors import InvalidInputError
from app.records.keys import is_admin_key
from app.records.tasks import artifact_from_row, record_task_event
from app.schemas.infer import (
    MAX_TEXT,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    PinState,
    ServingState,
)

router = APIRouter(tags=["inference"])


def runtime(request: Request, settings):
    return serving_runtime(request.app.state, settings)


async def _owned_tasks(
    request: Request, settings, tenant_id: str, inputs: list[InferInput]
) -> dict[str, TaskArtifact]:
    """The tenant's tasks that `inputs` name (from the process's lookup cache, else read off
    the event loop), each checked against its inputs' shape."""
    lookup = task_lookup(request.app.state, settings)
    ids = list(dict.fromkeys(item.task for item in inputs))
    tasks = lookup.fresh(tenant_id, ids)
    if tasks is None:
        tasks = await offload(tenant_id, lookup.load, settings, tenant_id, ids)
    for item in inputs:
        art = tasks[item.task]
        if bool(art.text_pair_column) != (item.text_pair is not None):
            need = "needs" if art.text_pair_column else "takes no"
            raise InvalidInputError(
                f"task {item.task} {need} text_pair (it was trained on "
                f"{art.text_column!r}, {art.text_pair_column!r})"
            )
    return tasks


async def _infer(request, settings, tenant_id, inputs: list[InferInput]) -> InferResponse:
    tasks = await _owned_tasks(request, settings, tenant_id, inputs)
    rt = runtime(request, settings)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(inputs):
        groups.setdefault(item.task, []).append(i)
    results = await asyncio.gather(
        *(
            rt.batcher.submit(
                tasks[t], [(inputs[i].text, inputs[i].text_pair) for i in idx], tenant_id
            )
            for t, idx in groups.items()
        )
    )
    outputs: list[InferOutput | None] = [None] * len(inputs)
    for (task_id, idx), logits in zip(groups.items(), results, strict=True):
        if not logits.isfinite().all():
            raise InvalidInputError(
                f"task {task_id} computes non-finite scores for these inputs (its weights "
                "overflow); retrain it or import a well-formed task file",
                code="task_not_finite",
            )
        shown = tasks[task_id].space.present(logits)
        for row, i in zip(shown, idx, strict=True):
            outputs[i] = InferOutput(index=i, task=task_id, **row)
    return InferResponse(outputs=outputs)


@router.post(
    "/v1/infer",
    response_model=InferResponse,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 400, 404, 422, 429),
)
async def infer(
    request: Request,
    body: InferRequest,
    settings: SettingsDep,
    tenant_id: TenantDep,
    _: InferenceLimit,
) -> InferResponse:
    return await _infer(request, settings, tenant_id, body.inputs)


@router.get(
    "/v1/tasks/{task_id}/predict",
    response_model=InferOutput,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 404, 422, 429),
)
async def predict_one(
    request: Request,
    task_id: ResourceId,
    settings: SettingsDep,
    tenant_id: TenantDep,
    _: InferenceLimit,
    text: Annotated[str, Query(min_length=1, max_length=MAX_TEXT)],
    text_pair: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
) -> InferOutput:
    item = InferInput(task=task_id, text=text, text_pair=text_pair)
    return (await _infer(request, settings, tenant_id, [item])).outputs[0]


@router.get("/v1/serving", response_model=ServingState, responses=error_responses(*AUTHED))
def serving_state(
    request: Request, session: SessionDep, settings: SettingsDep, tenant_id: TenantDep
) -> dict:
    """The process's serving state; of the resident tasks, only the tenant's own (another
    tenant's digests would say which tasks it serves)."""
    state = runtime(request, settings).describe()
    if is_admin_key(session, request.headers.get("authorization")):
        return state  # an operator's key: the whole process
    resident = state["cache"]["resident_tasks"]
    digests = [t["digest"] for t in resident]
    own = set(
        session.scalars(
            select(Task.digest).where(Task.tenant_id == tenant_id, Task.digest.in_(digests))
        )
    )
    state["cache"]["resident_tasks"] = [t for t in resident if t["digest"] in own]
    return state


@router.post(
    "/v1/tasks/{task_id}/pin",
    response_model=PinState,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 404, 409, 422),
)
async def pin_task(
    request: Request,
    task_id: ResourceId,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
) -> dict:
    """Preload a task's weights now and keep them resident (never evicted)."""
    rt = runtime(request, settings)
    art = await offload(tenant_id, _pin, rt, session, tenant_id, task_id)
    task_lookup(request.app.state, settings).remember(tenant_id, task_id, art)  # preloaded too
    return {"task": task_id, "digest": art.digest, "pinned": True}


def _pin(rt, session, tenant_id: str, task_id: str) -> TaskArtifact:
    row = get_owned(session, Task, tenant_id, task_id, "task")
    art = artifact_from_row(row)
    rt.pin(art, tenant_id)
    record_task_event(session, row, "pinned")  # the other replicas pin it too
    session.commit()
    return art


@router.delete(
    "/v1/tasks/{task_id}/pin",
    response_model=PinState,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 404, 422),
)
def unpin_task(
    request: Request,
    task_id: ResourceId,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
) -> dict:
    row = get_owned(session, Task, tenant_id, task_id, "task")
    resident = runtime(request, settings).unpin(artifact_from_row(row), tenant_id)
    record_task_event(session, row, "unpinned")
    session.commit()
    return {"task": task_id, "pinned": False, "resident": resident}
