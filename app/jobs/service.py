"""Job lifecycle shared by the API and the workers: create (idempotently), cancel, events."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, Tenant, utcnow
from app.db.repo import get_dataset, get_owned
from app.errors import (
    IdempotencyMismatchError,
    InvalidStateError,
    RateLimitedError,
    ServiceBusyError,
)

FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
ACTIVE_JOBS_RETRY_AFTER_S = 30


def too_many_active_jobs(active: int, limit: int) -> RateLimitedError:
    return RateLimitedError(
        f"{active} jobs are queued or running for this tenant and the limit is {limit}; "
        "wait for one to finish or cancel one, or have the operator raise "
        "KILOTASK_TENANT_MAX_ACTIVE_JOBS",
        retry_after=ACTIVE_JOBS_RETRY_AFTER_S,
        code="too_many_active_jobs",
    )


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def add_event(session: Session, job_id: str, type_: str, **data) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data))


def find_idempotent(session: Session, tenant_id: str, key: str | None, digest: str) -> Job | None:
    """The job created earlier with this key, if any; another body with the same key is 422."""
    if not key:
        return None
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise IdempotencyMismatchError(
            f"Idempotency-Key '{key}' was already used with a different request body; "
            "use a new key for a new job"
        )
    return job


def create_job(
    session: Session,
    tenant_id: str,
    fields: dict,
    key: str | None,
    digest: str,
    max_active: int = 0,
) -> tuple[Job, bool]:
    """(the new job, True), or (the job another request just created with this key and body,
    False) when that request won the race between find_idempotent and this insert.

    `max_active` (0: none) is enforced atomically: the job is inserted first, then the tenant's
    row is locked (PostgreSQL; SQLite has one writer at a time, and the insert made this
    transaction the writer) and its active jobs counted, this one included; over the limit,
    the insert is rolled back (429). Twenty simultaneous submissions against a limit of 8 admit 8.
    """
    get_dataset(session, tenant_id, fields["train_dataset_id"])
    if fields.get("eval_dataset_id") is not None:
        get_dataset(session, tenant_id, fields["eval_dataset_id"])
    session.commit()  # end the reads: on SQLite the write below then starts a fresh snapshot
    job = Job(tenant_id=tenant_id, idempotency_key=key, request_hash=digest, **fields)
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        existing = find_idempotent(session, tenant_id, key, digest)  # 422 if another body
        if existing is None:
            raise
        return existing, False
    if max_active:
        # NO KEY UPDATE: it queues the tenant's submitters behind each other but not behind
        # the KEY SHARE lock that each one's insert took (FOR UPDATE deadlocked on those)
        lock = select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
        session.execute(lock)
        active = session.scalar(
            select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
        )
        if active > max_active:
            session.rollback()
            raise too_many_active_jobs(active - 1, max_active)
    add_event(session, job.id, "status", status="queued")
    session.commit()
    return job, True


def enqueue_or_fail(session: Session, settings, job: Job) -> None:
    """Queue `job` for the workers; if the broker is down, mark it failed (it must not sit
    queued forever) and raise ServiceBusyError (503)."""
    from app.jobs.queue import enqueue_train

    try:
        enqueue_train(settings, job.id)
    except Exception as exc:
        job.status, job.error_code = "failed", "broker_unavailable"
        job.error_message = f"could not queue the job: {type(exc).__name__}"
        session.commit()
        raise ServiceBusyError("the job queue is unreachable; try again shortly") from exc


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get_owned(session, Job, tenant_id, job_id, "job")
    if job.status in FINISHED:
        raise InvalidStateError(f"job {job_id} has already {job.status}; nothing to cancel")
    if job.status == "queued":
        job.status, job.finished_at = "cancelled", utcnow()
        add_event(session, job.id, "status", status="cancelled")
    else:
        job.cancel_requested = True  # the worker stops at its next step and marks it cancelled
        add_event(session, job.id, "message", message="cancel requested")
    session.commit()
    return job
