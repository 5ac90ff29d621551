"""Trained tasks: list, read, download the sub-kilobyte file, import one, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, TenantDep
from app.api.routes.models import model_info
from app.db.models import Task
from app.db.repo import get_owned
from app.engine.artifact import TaskArtifact
from app.engine.errors import BaseModelMismatchError
from app.errors import PayloadTooLargeError
from app.jobs import page
from app.schemas.tasks import TaskPublic, TasksPage
from app.task_records import artifact_from_row, row_from_artifact

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
MAX_TASK_FILE = 64 * 2**20  # a generous cap: d = 4 M in float32 is 16 MB


@router.get("", response_model=TasksPage)
def list_tasks(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TasksPage:
    stmt = select(Task).where(Task.tenant_id == tenant_id).order_by(Task.created_at.desc())
    rows, total = page(session, stmt, limit, offset)
    return TasksPage(
        data=[TaskPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{task_id}", response_model=TaskPublic)
def read_task(session: SessionDep, tenant_id: TenantDep, task_id: str) -> Task:
    return get_owned(session, Task, tenant_id, task_id, "task")


@router.get("/{task_id}/vector", response_class=Response)
def download_task(
    request: Request, session: SessionDep, tenant_id: TenantDep, task_id: str
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


def _export_zip(artifact: TaskArtifact, fmt: str) -> bytes:
    """The exported folder as a zip archive, built in a temporary folder."""
    import io
    import tempfile
    import zipfile
    from pathlib import Path

    from app.engine.export import export_task

    with tempfile.TemporaryDirectory() as tmp:
        out = export_task(artifact, fmt, Path(tmp) / "export")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, path.name)
        return buffer.getvalue()


@router.get("/{task_id}/export", response_class=Response)
async def export_task_zip(
    session: SessionDep,
    tenant_id: TenantDep,
    task_id: str,
    format: Annotated[Literal["peft", "hf"], Query(description="peft: LoRA adapter; hf: merged")],
) -> Response:
    """The task as a zip: a PEFT LoRA adapter (lowrank tasks) or a merged HF model (any)."""
    artifact = artifact_from_row(get_owned(session, Task, tenant_id, task_id, "task"))
    data = await run_in_threadpool(_export_zip, artifact, format)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{task_id}-{format}.zip"'},
    )


@router.post("", status_code=201, response_model=TaskPublic)
async def import_task(
    session: SessionDep,
    tenant_id: TenantDep,
    file: Annotated[UploadFile, File(description="a kilotask task file (.safetensors)")],
) -> JSONResponse:
    data = await file.read(MAX_TASK_FILE + 1)
    if len(data) > MAX_TASK_FILE:
        raise PayloadTooLargeError(f"task files are at most {MAX_TASK_FILE // 2**20} MB")
    artifact = TaskArtifact.from_bytes(data)  # format, spec, digest and finite-vector checks
    info = await run_in_threadpool(model_info, artifact.model)  # unknown model -> 422
    if info.base_digest != artifact.base_digest:
        raise BaseModelMismatchError(
            f"task was trained on weights with digest {artifact.base_digest[:12]}…, but this "
            f"server's '{artifact.model}' has {info.base_digest[:12]}…"
        )
    existing = session.scalar(
        select(Task).where(Task.tenant_id == tenant_id, Task.digest == artifact.digest)
    )
    if existing is not None:
        return JSONResponse(TaskPublic.model_validate(existing).model_dump(mode="json"), 200)
    row = row_from_artifact(artifact, tenant_id, None)
    session.add(row)
    session.commit()
    return JSONResponse(TaskPublic.model_validate(row).model_dump(mode="json"), 201)


@router.delete("/{task_id}", status_code=204, response_class=Response)
def delete_task(session: SessionDep, tenant_id: TenantDep, task_id: str) -> Response:
    session.delete(get_owned(session, Task, tenant_id, task_id, "task"))
    session.commit()
    return Response(status_code=204)
