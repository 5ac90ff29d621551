"""Job leases and fenced writes: how a worker proves, on every write, that a job is still its.

A worker claims a queued job with one conditional UPDATE that flips it to running, bumps
`attempts` (the fencing token) and sets a lease; a heartbeat thread renews the lease while the
job runs. Every write the worker then makes (progress, events, checkpoint, task row, final
status) runs in one transaction that begins with

    UPDATE job SET lease_expires_at = ... WHERE id = :id AND attempts = :mine AND status = 'running'

and is rolled back (LeaseLost) when that touches no row: the job was requeued by the sweeper,
cancelled, failed or claimed by a newer attempt, and this worker must stop without writing. On
PostgreSQL that UPDATE holds the row lock to the end of the transaction, so a concurrent claim
waits for it; SQLite serialises writers anyway. A write that fails because the database is
unreachable is retried with backoff for up to `retry_s` (settings.db_retry_s).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, utcnow
from app.jobs.heartbeat import beating
from app.jobs.service import FINISHED

log = logging.getLogger("kilotask.leases")
T = TypeVar("T")


def worker_name() -> str:
    """Who holds a lease: host and pid, so `serve` can release the leases of a child it saw die."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseLost(Exception):
    """The job is no longer this worker's (requeued, cancelled, failed, or claimed again)."""


def is_unreachable(exc: BaseException) -> bool:
    """A database error that a later retry may not see: connection refused or dropped, server
    shutting down, SQLite busy. Constraint violations and bad SQL are not."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(fn: Callable[[], T], retry_s: float, what: str) -> T:
    """fn() until it gets through to the database, with exponential backoff capped at 10 s;
    re-raises the last error after `retry_s` seconds."""
    deadline, delay = time.monotonic() + retry_s, 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_unreachable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@dataclass
class Lease:
    """This worker's claim on one job (attempt `attempt`), and the writes it fences."""

    engine: Engine
    job_id: str
    attempt: int
    owner: str
    lease_s: float
    retry_s: float
    lost: threading.Event = field(default_factory=threading.Event)

    def _renew(self, session: Session) -> None:
        renewed = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.attempts == self.attempt, Job.status == "running")
            .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_s))
            .execution_options(synchronize_session=False)
        )
        if renewed.rowcount != 1:
            self.lost.set()
            raise LeaseLost(f"job {self.job_id}: attempt {self.attempt} no longer holds it")

    def write(self, apply: Callable[[Session], T], what: str, retry: bool = True) -> T:
        """apply(session) in one fenced transaction; retried while the database is down when
        `retry`, else the first connection error is raised (the caller keeps its data)."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job_id}: attempt {self.attempt} lost its lease")

        def once() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                self._renew(session)
                out = apply(session)
                session.commit()
                return out

        return retry_db(once, self.retry_s if retry else 0.0, what)

    def kept_alive(self) -> AbstractContextManager[None]:
        """Renew the lease every lease_s / 6 from a thread while the body runs; a renewal that
        finds the job gone sets `lost` (the trainer checks it at its next step)."""

        def renew() -> bool:
            try:
                with Session(self.engine) as session:
                    self._renew(session)
                    session.commit()
            except LeaseLost:
                log.warning("job %s: lease lost (attempt %d)", self.job_id, self.attempt)
                return False
            return True

        return beating(self.lease_s / 6, renew, f"lease-{self.job_id}")


def event_row(job_id: str, type_: str, **data) -> JobEvent:
    """An event stamped now, even if it reaches the database later (after an outage)."""
    return JobEvent(job_id=job_id, type=type_, data=data, created_at=utcnow())


def claim(engine: Engine, job_id: str, lease_s: float, retry_s: float) -> Lease | str:
    """Take the queued job `job_id` for this process: its lease, or why not ('gone',
    'finished', 'taken': running under another worker's lease, which the sweeper requeues if
    it runs out)."""
    owner = worker_name()

    def once() -> Lease | str:
        with Session(engine) as session:
            row = session.execute(
                select(
                    Job.status,
                    Job.attempts,
                    func.coalesce(Job.checkpoint_step, Job.step),  # jobs from before the column
                    Job.checkpoint.is_not(None) | Job.checkpoint_ref.is_not(None),
                ).where(Job.id == job_id)
            ).first()
            if row is None:
                return "gone"
            status, attempts, step, resumable = row
            if status in FINISHED:
                return status
            if status != "queued":
                return "taken"
            now = utcnow()
            taken = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued", Job.attempts == attempts)
                .values(
                    status="running",
                    attempts=attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    started_at=func.coalesce(Job.started_at, now),
                )
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                return "taken"
            resumed_from = step if resumable else 0
            session.add(event_row(job_id, "status", status="running", attempt=attempts + 1,
                                  resumed_from_step=resumed_from, worker=owner))  # fmt: skip
            session.commit()
            return Lease(engine, job_id, attempts + 1, owner, lease_s, retry_s)

    return retry_db(once, retry_s, f"claim {job_id}")
