"""JobReporter: the trainer's callbacks, writing to the job row through the worker's lease.

Every write is fenced (app/jobs/leases.py), so a worker that lost its job writes nothing and stops
at its next step. Progress, metrics and checkpoints are throttled and, while the database is
unreachable, kept in memory: training goes on and the next write that gets through carries all
of it (events keep the time they happened). The final write waits for the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, utcnow
from app.engine.metrics import reported
from app.engine.trainer import TrainCallbacks
from app.jobs import shutdown
from app.jobs.leases import Lease, LeaseLost, is_unreachable
from app.jobs.sweeper import SEND_AT_NEXT_SWEEP

log = logging.getLogger("kilotask.worker")


class JobReporter(TrainCallbacks):
    def __init__(
        self,
        lease: Lease,
        checkpoint_path: Path | None = None,
        every_s: float = 1.0,
        checkpoint_ref: str | None = None,
    ):
        """With `checkpoint_ref` (full fine-tuning) the checkpoint stays in its file in the
        shared store and the row records that name; else its bytes go into the row."""
        self.lease, self.path, self.every_s = lease, checkpoint_path, every_s
        self.checkpoint_ref = checkpoint_ref
        self._values: dict = {}  # job columns for the next write (newest value wins)
        self._events: list[tuple[str, dict, datetime]] = []
        self._last_write = self._last_poll = 0.0
        self.checkpoint_step = 0  # the step of the last checkpoint this attempt saved

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    def record(self, values: dict | None = None, event_type: str | None = None, /, **data) -> None:
        """Buffer column values and an event (of `event_type`, with `data`) for the next write."""
        self._values.update(values or {})
        if event_type is not None:
            self._events.append((event_type, data, utcnow()))

    def flush(self, wait: bool = False, also: Callable[[Session], dict] | None = None) -> bool:
        """Write what is buffered in one fenced transaction. With `wait`, retry while the
        database is down (and raise if it stays down); without, give up at once and keep the
        buffer. `also(session)` runs first in the same transaction and returns more values."""
        values, events = self._values, self._events
        self._values, self._events = {}, []

        def apply(session: Session) -> None:
            extra = also(session) if also is not None else {}
            if values or extra:
                session.execute(
                    update(Job).where(Job.id == self.job_id).values(**values, **extra)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip
            session.add_all(
                JobEvent(job_id=self.job_id, type=kind, data=data, created_at=at)
                for kind, data, at in events
            )

        try:
            self.lease.write(apply, f"job {self.job_id}", retry=wait)
        except LeaseLost:
            raise
        except Exception as exc:
            self._values, self._events = values | self._values, events + self._events
            if wait or not is_unreachable(exc):
                raise
            log.warning("job %s: database unreachable, %d events kept for the next write",
                        self.job_id, len(self._events))  # fmt: skip
            return False
        self._last_write = time.monotonic()
        return True

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.record({"step": step, "total_steps": total}, "progress", step=step, total=total,
                    loss=loss)  # fmt: skip
        if time.monotonic() - self._last_write >= self.every_s or step == total:
            self.flush()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        shown = reported(metrics)
        self.record({"metrics": shown}, "metrics", step=step, **shown)
        self.flush()

    def on_event(self, kind: str, data: dict) -> None:
        """The learning-rate probe's choice and losses, a held-out slice, an early stop, a
        degenerate task: one job event each (the console shows them)."""
        self.record(None, kind, **data)
        self.flush()

    def on_checkpoint(self, step: int) -> None:
        assert self.path is not None, "checkpoints need a checkpoint path"
        self.checkpoint_step = step
        saved = {"step": step, "checkpoint_step": step}
        if self.checkpoint_ref is not None:
            self.record({"checkpoint_ref": self.checkpoint_ref, **saved})
        else:
            self.record({"checkpoint": self.path.read_bytes(), **saved})
        self.flush()

    def hand_back(self, message: str) -> None:
        """The worker is shutting down: back to `queued`, lease released, this attempt not
        counted against KILOTASK_MAX_WORKER_LOSSES (the checkpoint stays). Not sent from here
        (this worker's own loop would take the message again while it stops): the first sweep
        of any worker or `serve` sends it, at its start or within KILOTASK_SWEEP_EVERY_S."""
        self.record(
            {"status": "queued", "lease_owner": None, "lease_expires_at": None,
             "attempts": self.lease.attempt - 1, "enqueued_at": SEND_AT_NEXT_SWEEP},
            "message", message=message,
        )  # fmt: skip
        self.flush(wait=True)

    def should_stop(self) -> bool:
        """Stop when a cancel was asked for or the worker is shutting down (the trainer then
        checkpoints); raise LeaseLost when the job is no longer ours."""
        if self.lease.lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost; stopping without writing")
        if shutdown.requested():
            return True
        now = time.monotonic()
        if now - self._last_poll < 0.5:
            return False
        self._last_poll = now
        try:
            with Session(self.lease.engine) as session:
                query = select(Job.cancel_requested).where(Job.id == self.job_id)
                return bool(session.scalar(query))
        except Exception as exc:  # database down: keep training, ask again later
            if not is_unreachable(exc):
                raise
            return False

    def finish(
        self,
        status: str,
        code: str | None = None,
        message: str = "",
        values: dict | None = None,
        also: Callable[[Session], dict] | None = None,
    ) -> None:
        """The job's last write: status, error, whatever is still buffered; waits for the
        database (settings.db_retry_s)."""
        self.record(
            {"status": status, "finished_at": utcnow(), "error_code": code,
             "error_message": message or None, "lease_owner": None, **(values or {})},
            "status", status=status, **({"error": message} if code else {}),
        )  # fmt: skip
        self.flush(wait=True, also=also)

    def finish_crashed(self, exc: BaseException, values: dict | None = None) -> bool:
        """Record a crash on the job if the database lets us (the caller re-raises, so Celery
        logs it); False if not: the lease then runs out and the job is requeued, so its
        checkpoint must stay."""
        try:
            self.finish("failed", "internal_error", f"{type(exc).__name__}: {exc}", values=values)
        except Exception as again:
            log.warning("job %s: could not record the failure: %s", self.job_id, again)
            return False
        return True
