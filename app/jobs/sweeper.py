"""The sweeper: nothing stays stuck. It runs in every worker and in `kilotask serve`.

Each sweep (every settings.sweep_every_s, and at once when `serve` sees its worker die):
1. a running job whose lease has run out lost its worker: it goes back to queued and is sent
   again (it resumes from its checkpoint), or ends `cancelled` if a cancel was asked for, or
   ends `failed` with code `worker_lost` once it has lost settings.max_worker_losses workers;
2. a job queued for longer than settings.requeue_queued_after_s whose message is not waiting
   in the broker (lost in a broker restart, or never sent because the API died) is sent again.

Every change is a conditional UPDATE, so several sweepers never act twice on one job; a job
sent twice is harmless, since only one worker can claim it (app/jobs/leases.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Job, utcnow
from app.db.session import get_engine
from app.jobs.checkpoint_store import CheckpointStore
from app.jobs.leases import event_row, worker_name
from app.jobs.queue import enqueue_train, waiting_job_ids

log = logging.getLogger("kilotask.sweeper")


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def _lost_worker(session: Session, settings: Settings, report: SweepReport) -> None:
    now = utcnow()
    expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    rows = session.execute(
        select(Job.id, Job.attempts, Job.cancel_requested, Job.lease_owner, Job.step).where(
            Job.status == "running", expired
        )
    ).all()
    for job_id, attempts, cancel, owner, step in rows:
        fence = (Job.id == job_id, Job.attempts == attempts, Job.status == "running", expired)
        lost = f"its worker ({owner or 'unknown'}) stopped renewing its lease at step {step}"
        if cancel:
            values, bucket = {"status": "cancelled", "finished_at": now}, report.cancelled
            values["checkpoint_ref"] = None
            event = event_row(job_id, "status", status="cancelled", reason=lost)
        elif attempts >= settings.max_worker_losses:
            message = (
                f"the job lost its worker {attempts} times (last: {lost}); it is not retried "
                "again: check the workers' logs (out of memory? killed?) and resubmit"
            )
            values = {"status": "failed", "finished_at": now, "error_code": "worker_lost",
                      "error_message": message, "checkpoint_ref": None}  # fmt: skip
            bucket, event = report.failed, event_row(job_id, "status", status="failed",
                                                     error=message)  # fmt: skip
        else:
            values, bucket = {"status": "queued", "enqueued_at": now}, report.requeued
            event = event_row(job_id, "message", message=f"requeued: {lost}", attempt=attempts)
        done = session.execute(
            update(Job).where(*fence).values(lease_owner=None, **values)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        if done.rowcount == 1:
            session.add(event)
            bucket.append(job_id)
        session.commit()


# a queued job's enqueued_at that the next sweep treats as a lost message: sent at once
SEND_AT_NEXT_SWEEP = datetime(1970, 1, 1, tzinfo=UTC)


def _lost_message(session: Session, settings: Settings, report: SweepReport) -> None:
    cutoff = utcnow() - timedelta(seconds=settings.requeue_queued_after_s)
    stale = (Job.status == "queued", func.coalesce(Job.enqueued_at, Job.created_at) < cutoff)
    candidates = list(session.scalars(select(Job.id).where(*stale)))
    session.commit()
    if not candidates:
        return
    waiting = waiting_job_ids(settings)
    for job_id in candidates:
        if job_id in waiting:
            continue
        taken = session.execute(
            update(Job).where(Job.id == job_id, *stale).values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        session.commit()
        if taken.rowcount == 1:
            report.resent.append(job_id)


def sweep(settings: Settings) -> SweepReport:
    """One pass over the jobs; sends the requeued ones. Raises if the database is down."""
    report = SweepReport()
    with Session(get_engine(settings)) as session:
        _lost_worker(session, settings, report)
        _lost_message(session, settings, report)
    for job_id in report.requeued + report.resent:
        enqueue_train(settings, job_id)  # a failure leaves it queued: the next sweep resends
    for job_id in report.failed + report.cancelled:  # ended: its checkpoint files go
        CheckpointStore(settings.checkpoint_dir).remove(job_id)
    if report.requeued or report.failed or report.cancelled or report.resent:
        log.warning("sweep: %s", report)
    return report


def expire_leases_of(settings: Settings, owner: str) -> int:
    """End every lease held by `owner` now (a worker process known to be dead)."""
    with Session(get_engine(settings)) as session:
        done = session.execute(
            update(Job).where(Job.status == "running", Job.lease_owner == owner)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        session.commit()
        return done.rowcount


class Sweeper:
    """sweep() every settings.sweep_every_s on a daemon thread; errors are logged, not fatal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._loop, name="kilotask-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def worker_died(self, pid: int) -> None:
        """Called by `serve` when its worker exits: release its leases and sweep at once."""
        owner = f"{worker_name().split(':')[0]}:{pid}"
        try:
            expire_leases_of(self.settings, owner)
        except Exception as exc:
            log.warning("could not release the leases of %s: %s", owner, exc)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sweep(self.settings)
            except Exception as exc:  # database or broker down: try again next round
                log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
            self._wake.wait(self.settings.sweep_every_s)
            self._wake.clear()
