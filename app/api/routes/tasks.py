"""Trained tasks: list, read, download the sub-kilobyte file, import one, delete."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import Integer, String, select
from starlette.background import BackgroundTask

from app.api.deps import PageDep, ResourceId, SessionDep, SettingsDep, TenantDep
from app.api.errors import status_for
from app.api.limits import check_storage
from app.api.offload import offload
from app.api.openapi import AUTHED, binary_response, error_responses
from app.api.routes.models import (
    check_max_length,
    check_model_allowed,
    model_info,
    parameter_count,
)
from app.config import Settings
from app.db.models import Task
from app.db.repo import get_owned, page
from app.engine.artifact import TaskArtifact
from app.engine.errors import BaseModelMismatchError, EngineError
from app.errors import InvalidInputError, KilotaskError, PayloadTooLargeError
from app.records.tasks import artifact_from_row, record_task_event, row_from_artifact
from app.schemas.common import ErrorDetail
from app.schemas.tasks import TaskBatchItem, TaskBatchResult, TaskPublic, TasksPage

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
MAX_TASK_FILE = 64 * 2**20  # a generous cap: d = 4 M in float32 is 16 MB
MAX_BATCH_FILES = 1000  # task files per :batch request (also multipart's own part limit)


@router.get("", response_model=TasksPage, responses=error_responses(*AUTHED, 404, 422))
def list_tasks(session: SessionDep, tenant_id: TenantDep, q: PageDep) -> TasksPage:
    stmt = select(Task).where(Task.tenant_id == tenant_id)
    rows, total, next_after = page(session, stmt, Task, tenant_id, q.limit, q.offset, q.after)
    return TasksPage(data=[TaskPublic.model_validate(r) for r in rows], total=total,
                     limit=q.limit, offset=q.offset, after=q.after,
                     next_after=next_after)  # fmt: skip


@router.get("/{task_id}", response_model=TaskPublic, responses=error_responses(*AUTHED, 404, 422))
def read_task(session: SessionDep, tenant_id: TenantDep, task_id: ResourceId) -> Task:
    return get_owned(session, Task, tenant_id, task_id, "task")


@router.get(
    "/{task_id}/vector",
    response_class=Response,
    responses=binary_response("application/octet-stream", "the task file (safetensors)")
    | {304: {"description": "Not modified: If-None-Match named the current ETag"}}
    | error_responses(*AUTHED, 404, 422),
)
def download_task(
    request: Request, session: SessionDep, tenant_id: TenantDep, task_id: ResourceId
) -> Response:
    """The task file (safetensors). ETag is the content digest, so caches never go stale."""
    row = get_owned(session, Task, tenant_id, task_id, "task")
    etag = f'"{row.digest}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        artifact_from_row(row).to_bytes(),
        media_type="application/octet-stream",
        headers={
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{row.id}.safetensors"',
        },
    )


def _export_owned(session, tenant_id: str, task_id: str, fmt: str) -> str:
    return _export_zip(artifact_from_row(get_owned(session, Task, tenant_id, task_id, "task")), fmt)


def _export_zip(artifact: TaskArtifact, fmt: str) -> str:
    """The exported folder as a zip archive in a temporary file (its path; the response
    streams it, then deletes it): a merged model is 84 MB, six held in memory at once took
    1.2 GB."""
    import tempfile
    import zipfile
    from pathlib import Path

    from app.engine.export import export_task

    with tempfile.TemporaryDirectory() as tmp:
        out = export_task(artifact, fmt, Path(tmp) / "export")
        handle, name = tempfile.mkstemp(suffix=".zip", prefix="kilotask-export-")
        try:
            with (
                os.fdopen(handle, "wb") as raw,
                zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive,
            ):
                for path in sorted(out.iterdir()):
                    archive.write(path, path.name)
        except BaseException:
            os.unlink(name)
            raise
        return name


@router.get(
    "/{task_id}/export",
    response_class=Response,
    responses=binary_response("application/zip", "the exported folder as a zip archive")
    | error_responses(*AUTHED, 404, 422),
)
async def export_task_zip(
    session: SessionDep,
    tenant_id: TenantDep,
    task_id: ResourceId,
    format: Annotated[Literal["peft", "hf"], Query(description="peft: LoRA adapter; hf: merged")],
) -> Response:
    """The task as a zip: a PEFT LoRA adapter (lowrank tasks) or a merged HF model (any)."""
    path = await offload(tenant_id, _export_owned, session, tenant_id, task_id, format)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"{task_id}-{format}.zip",
        background=BackgroundTask(os.unlink, path),
    )


def _check_storable(row: Task) -> None:
    """A well-formed file can still hold values its table cannot (a seed over 2^31 - 1, a
    300-character column name): refuse them here rather than fail the insert."""
    for column in Task.__table__.columns:
        value = getattr(row, column.key, None)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(column.type, Integer) and not -(2**31) <= value < 2**31:
            raise InvalidInputError(
                f"task file field {column.key} = {value} is out of range for this server "
                f"(at most {2**31 - 1})"
            )
        if isinstance(column.type, String) and isinstance(value, str):
            length = column.type.length
            if (length and len(value) > length) or "\x00" in value:
                raise InvalidInputError(
                    f"task file field {column.key} must be at most {length} characters "
                    "without NUL bytes"
                )


@router.post(
    "",
    status_code=201,
    response_model=TaskPublic,
    responses={200: {"model": TaskPublic, "description": "This tenant already has the task"}}
    | error_responses(*AUTHED, 400, 413, 422),
)
async def import_task(
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    file: Annotated[UploadFile, File(description="a kilotask task file (.safetensors)")],
) -> JSONResponse:
    data = await file.read(MAX_TASK_FILE + 1)
    return await offload(tenant_id, _import, session, settings, tenant_id, data)


def _import(session, settings: Settings, tenant_id: str, data: bytes) -> JSONResponse:
    """Validate a task file against the spec and this server and store it, in one
    transaction: off the event loop."""
    artifact = _validated(data, settings)
    existing = session.scalar(
        select(Task).where(Task.tenant_id == tenant_id, Task.digest == artifact.digest)
    )
    if existing is not None:
        return JSONResponse(TaskPublic.model_validate(existing).model_dump(mode="json"), 200)
    row = row_from_artifact(artifact, tenant_id, None)
    _check_storable(row)
    check_storage(session, tenant_id, row.size_bytes, settings.tenant_max_storage_mb)
    session.add(row)
    session.commit()
    return JSONResponse(TaskPublic.model_validate(row).model_dump(mode="json"), 201)


def _validated(data: bytes, settings: Settings) -> TaskArtifact:
    """The task in `data`, checked against the file spec and this server (model, digest, D,
    label count, max length); raises the error a single import would answer."""
    if len(data) > MAX_TASK_FILE:
        raise PayloadTooLargeError(f"task files are at most {MAX_TASK_FILE // 2**20} MB")
    artifact = TaskArtifact.from_bytes(data)  # format, spec, digest, field and vector checks
    check_model_allowed(artifact.model, settings)
    if len(artifact.labels) > settings.max_labels:
        raise InvalidInputError(
            f"the task has {len(artifact.labels)} labels; this server takes at most "
            f"{settings.max_labels} (KILOTASK_MAX_LABELS)",
            code="too_many_labels",
        )
    info = model_info(artifact.model)
    if info.base_digest != artifact.base_digest:
        raise BaseModelMismatchError(
            f"task was trained on weights with digest {artifact.base_digest[:12]}…, but this "
            f"server's '{artifact.model}' has {info.base_digest[:12]}…"
        )
    expected = parameter_count(artifact.model, artifact.space.size)
    if expected != artifact.D:
        raise BaseModelMismatchError(
            f"the task file says D = {artifact.D}, but '{artifact.model}' with "
            f"{artifact.space.size} outputs has {expected} parameters: not a task of this base"
        )
    check_max_length(artifact.model, artifact.max_length, "the task file's max_length")
    return artifact


@router.post(
    ":batch",
    response_model=TaskBatchResult,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 400, 413, 422),
)
async def import_tasks(
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
    files: Annotated[
        list[UploadFile],
        File(description=f"up to {MAX_BATCH_FILES} kilotask task files, one part each"),
    ],
) -> TaskBatchResult:
    """Many task files in one request, each validated as a single import is and answered on
    its own (201 new, 200 already stored, or its 4xx); the new ones are stored in one
    transaction. When no file can be imported the answer is a 422 naming the first failures.
    Send large sets in chunks (`kilotask import DIR --server URL` does)."""
    if len(files) > MAX_BATCH_FILES:
        raise PayloadTooLargeError(
            f"{len(files)} files in one batch; at most {MAX_BATCH_FILES}: send them in chunks"
        )
    blobs = [(f.filename or "", await f.read(MAX_TASK_FILE + 1)) for f in files]
    return await offload(tenant_id, _import_batch, session, settings, tenant_id, blobs)


def _import_batch(
    session, settings: Settings, tenant_id: str, blobs: list[tuple[str, bytes]]
) -> TaskBatchResult:
    results: list[TaskBatchItem] = []
    fresh: dict[str, tuple[int, Task]] = {}  # digest -> (its index, the row to insert)
    valid: list[tuple[int, TaskArtifact]] = []
    for i, (name, data) in enumerate(blobs):
        results.append(TaskBatchItem(index=i, filename=name, status=0))
        try:
            valid.append((i, _validated(data, settings)))
        except (KilotaskError, EngineError) as exc:
            results[i].status = status_for(exc)
            results[i].error = ErrorDetail(code=exc.code, message=getattr(exc, "message", str(exc)))
    digests = {a.digest for _, a in valid}
    stored = {
        row.digest: row
        for row in session.scalars(
            select(Task).where(Task.tenant_id == tenant_id, Task.digest.in_(digests))
        )
    }
    for i, artifact in valid:
        known = stored.get(artifact.digest)
        if known is None and artifact.digest in fresh:
            known = fresh[artifact.digest][1]  # the same file twice in this batch
        if known is not None:
            results[i].status, results[i].task = 200, known
            continue
        row = row_from_artifact(artifact, tenant_id, None)
        try:
            _check_storable(row)
        except KilotaskError as exc:
            results[i].status = status_for(exc)
            results[i].error = ErrorDetail(code=exc.code, message=exc.message)
            continue
        fresh[artifact.digest] = (i, row)
        results[i].status, results[i].task = 201, row
    if all(item.error is not None for item in results):  # nothing to store: say why
        shown = "; ".join(f"{r.filename or r.index}: {r.error.message}" for r in results[:3])
        more = f" (and {len(results) - 3} more)" if len(results) > 3 else ""
        raise InvalidInputError(f"no task file could be imported: {shown}{more}",
                                code="no_task_imported")  # fmt: skip
    rows = [row for _, row in fresh.values()]
    if rows:
        check_storage(session, tenant_id, sum(r.size_bytes for r in rows),
                      settings.tenant_max_storage_mb)  # fmt: skip
        session.add_all(rows)
        session.commit()
    for item in results:
        if item.task is not None:
            item.task = TaskPublic.model_validate(item.task)
    counts = {code: sum(r.status == code for r in results) for code in (201, 200)}
    return TaskBatchResult(data=results, created=counts[201], existing=counts[200],
                           failed=len(results) - counts[201] - counts[200])  # fmt: skip


@router.delete(
    "/{task_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(*AUTHED, 404, 422),
)
def delete_task(
    request: Request, session: SessionDep, tenant_id: TenantDep, task_id: ResourceId
) -> Response:
    """Deleting a task also drops this tenant's pin of it in this process."""
    row = get_owned(session, Task, tenant_id, task_id, "task")
    serving = getattr(request.app.state, "serving", None)
    if serving is not None:
        serving.unpin(artifact_from_row(row), tenant_id)
    record_task_event(session, row, "deleted")  # the other replicas forget it too
    session.delete(row)
    session.commit()
    lookup = getattr(request.app.state, "task_lookup", None)
    if lookup is not None:  # this process serves it no more at once
        lookup.forget(task_id)
    return Response(status_code=204)
