"""The train task: a thin adapter from a job id to app.engine.train_task.

Idempotent and resumable: a redelivered job (late ack after a crash) reloads its checkpoint
from the database and continues; a finished job is skipped; the task row is unique per job, so
a job stores exactly one task however often it runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets import parse
from app.db.models import Dataset, Job, Task, utcnow
from app.db.session import session_factory
from app.engine.data import ColumnSpec
from app.engine.errors import EngineError
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig, TrainingCancelled
from app.jobs import FINISHED, add_event
from app.queue import D90_HELP_TASK, TRAIN_TASK
from app.task_records import row_from_artifact
from workers.celery_app import app
from workers.d90 import help_search, run_d90_job

log = logging.getLogger("kilotask.worker")


class JobReporter(TrainCallbacks):
    """Writes progress, metrics and checkpoints to the job row; polls for cancellation.
    Database writes are throttled so a fast model is not slowed down by its bookkeeping."""

    def __init__(self, session: Session, job: Job, checkpoint_path: Path, every_s: float = 1.0):
        self.session, self.job, self.path, self.every_s = session, job, checkpoint_path, every_s
        self._last_write = 0.0
        self._last_poll = 0.0

    def on_step(self, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if now - self._last_write >= self.every_s or step == total:
            self.job.step, self.job.total_steps = step, total
            add_event(self.session, self.job.id, "progress", step=step, total=total, loss=loss)
            self.session.commit()
            self._last_write = now

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.job.metrics = {f"eval_{k}": v for k, v in metrics.items()}
        add_event(self.session, self.job.id, "metrics", step=step, **self.job.metrics)
        self.session.commit()

    def on_checkpoint(self, step: int) -> None:
        self.job.checkpoint = self.path.read_bytes()
        self.job.step = step
        self.session.commit()

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_poll < 0.5:
            return False
        self._last_poll = now
        self.session.refresh(self.job, ["cancel_requested"])
        return self.job.cancel_requested


def _labelled(ds: Dataset):
    return parse(
        ds.content, ds.filename, ColumnSpec(ds.text_column, ds.text_pair_column, ds.label_column)
    )


def _finish(
    session: Session, job: Job, status: str, code: str | None = None, msg: str = ""
) -> None:
    job.status, job.finished_at = status, utcnow()
    job.error_code, job.error_message = code, msg or None
    if status == "succeeded" and job.kind != "d90":  # a search's state is its record of runs
        job.checkpoint = None
    add_event(session, job.id, "status", status=status, **({"error": msg} if code else {}))
    session.commit()


def run_job(job_id: str, device: str = "cpu") -> str:
    """Run (or resume) one training job to its end; returns the final status."""
    settings = get_settings()
    with session_factory(settings)() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in FINISHED:
            return "skipped"
        if job.cancel_requested:
            _finish(session, job, "cancelled")
            return "cancelled"
        resumed = job.checkpoint is not None
        job.status, job.attempts = "running", job.attempts + 1
        job.started_at = job.started_at or utcnow()
        add_event(
            session,
            job.id,
            "status",
            status="running",
            attempt=job.attempts,
            resumed_from_step=job.step if resumed else 0,
        )
        session.commit()

        if job.kind == "d90":
            return _run_search(session, job, device)
        hp = dict(job.hyperparameters)
        storage_dtype = hp.pop("storage_dtype", "float32")
        max_length = hp.pop("max_length", 128)
        config = TrainConfig(method=job.method, checkpoint_every=settings.checkpoint_every, **hp)
        train_ds = session.get(Dataset, job.train_dataset_id)
        eval_ds = session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id else None
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "job.ckpt"
            if resumed:
                ckpt.write_bytes(job.checkpoint)
            try:
                request = TrainRequest(
                    job.model,
                    _labelled(train_ds),
                    _labelled(eval_ds) if eval_ds else None,
                    job.dim,
                    job.seed,
                    max_length,
                    storage_dtype,
                    config,
                    dict(job.options or {}),
                )
                outcome = train_task(request, JobReporter(session, job, ckpt), str(ckpt), device)
            except TrainingCancelled:
                _finish(session, job, "cancelled")
                return "cancelled"
            except EngineError as exc:  # bad input or config: retrying cannot help
                _finish(session, job, "failed", exc.code, str(exc))
                return "failed"
            except Exception as exc:  # a bug: record it on the job, then let Celery log it
                session.rollback()
                _finish(session, job, "failed", "internal_error", f"{type(exc).__name__}: {exc}")
                raise
        job.metrics = {f"eval_{k}": v for k, v in outcome.metrics.items()}
        if outcome.artifact is not None:
            _store_task(session, job, outcome.artifact.with_metrics(job.metrics))
        _finish(session, job, "succeeded")
        return "succeeded"


def _run_search(session: Session, job: Job, device: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        reporter = JobReporter(session, job, Path(tmp) / "unused.ckpt")
        try:
            artifact = run_d90_job(session, job, reporter, _labelled, device)
        except TrainingCancelled:
            _finish(session, job, "cancelled")
            return "cancelled"
        except EngineError as exc:
            _finish(session, job, "failed", exc.code, str(exc))
            return "failed"
        except Exception as exc:
            session.rollback()
            _finish(session, job, "failed", "internal_error", f"{type(exc).__name__}: {exc}")
            raise
    if artifact is not None:
        _store_task(session, job, artifact)
    _finish(session, job, "succeeded")
    return "succeeded"


def _store_task(session: Session, job: Job, artifact) -> None:
    existing = session.scalar(select(Task).where(Task.job_id == job.id))
    if existing is None:
        row = row_from_artifact(artifact, job.tenant_id, job.id)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:  # a concurrent duplicate delivery stored it first
            session.rollback()
            existing = session.scalar(select(Task).where(Task.job_id == job.id))
            job = session.get(Job, job.id)
        else:
            existing = row
    job.task_id = existing.id


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(job_id: str) -> str:
    import torch

    return run_job(job_id, "cuda" if torch.cuda.is_available() else "cpu")


@app.task(name=D90_HELP_TASK, acks_late=True, reject_on_worker_lost=True)
def d90_help(job_id: str) -> int:
    """Join a d90 search: do its pending runs, if any are left by the time this runs."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with session_factory(get_settings())() as session:
        return help_search(session, job_id, _labelled, device)
