"""Task rows <-> engine TaskArtifacts. A row stores exactly the numbers of the task file
(θ_{d-m} and λ in their storage dtype), so a download is byte-for-byte rebuildable."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, Task, TaskEvent
from app.engine.artifact import STORAGE_DTYPES, TaskArtifact

_NUMPY = {"float32": np.float32, "float16": np.float16}


def _to_bytes(t: torch.Tensor | None, dtype: str) -> bytes | None:
    return None if t is None else t.to(STORAGE_DTYPES[dtype]).numpy().tobytes()


def _from_bytes(data: bytes | None, dtype: str) -> torch.Tensor | None:
    if data is None:
        return None
    return torch.from_numpy(np.frombuffer(data, dtype=_NUMPY[dtype]).astype(np.float32))


def row_from_artifact(art: TaskArtifact, tenant_id: str, job_id: str | None) -> Task:
    return Task(
        tenant_id=tenant_id,
        job_id=job_id,
        model=art.model,
        base_digest=art.base_digest,
        spec=art.spec,
        seed=art.seed,
        method=art.method,
        dim=art.dim,
        num_parameters=art.D,
        theta=_to_bytes(art.theta, art.dtype),
        lam=_to_bytes(art.lam, art.dtype),
        dtype=art.dtype,
        label_names=list(art.labels),
        text_column=art.text_column,
        text_pair_column=art.text_pair_column,
        max_length=art.max_length,
        metrics=dict(art.metrics),
        digest=art.digest,
        size_bytes=len(art.to_bytes()),
        rank=art.rank,
        targets=art.targets,
        said_groups=art.said_groups,
        task_type=art.task_type,
        target_stats=art.target_stats,
        recipe=None if art.lr is None else {"lr": art.lr},
    )


def record_task_event(session: Session, row: Task, kind: str) -> None:
    """Tell every API replica (app/api/replica_sync.py) that `row` was deleted, pinned or
    unpinned; committed with the change itself."""
    session.add(TaskEvent(task_id=row.id, tenant_id=row.tenant_id, digest=row.digest, kind=kind))


def artifact_from_row(row: Task) -> TaskArtifact:
    return TaskArtifact(
        model=row.model,
        base_digest=row.base_digest,
        seed=row.seed,
        method=row.method,
        dim=row.dim,
        D=row.num_parameters,
        labels=list(row.label_names),
        text_column=row.text_column,
        text_pair_column=row.text_pair_column,
        max_length=row.max_length,
        theta=_from_bytes(row.theta, row.dtype),
        lam=_from_bytes(row.lam, row.dtype),
        metrics=dict(row.metrics),
        dtype=row.dtype,
        spec=row.spec,
        rank=row.rank,
        targets=row.targets,
        said_groups=row.said_groups,
        task_type=row.task_type,
        target_stats=row.target_stats,
        lr=(row.recipe or {}).get("lr"),
    )


def task_storer(
    job: Job, artifact: TaskArtifact | None, recipe: dict | None = None
) -> Callable[[Session], dict]:
    """Store the job's task in the same fenced transaction as its final status: a job whose
    lease was lost stores nothing, and the unique job_id keeps it to one task. `recipe`: how
    it was trained (the probe's losses too, which the task file leaves out)."""

    def store(session: Session) -> dict:
        if artifact is None:
            return {}
        task_id = session.scalar(select(Task.id).where(Task.job_id == job.id))
        if task_id is None:
            row = row_from_artifact(artifact, job.tenant_id, job.id)
            row.recipe = recipe or row.recipe
            session.add(row)
            session.flush()
            task_id = row.id
        return {"task_id": task_id}

    return store
