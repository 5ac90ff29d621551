"""The train task: a thin adapter from a job id to app.engine.train_task.

A worker first claims the job (app/leases.py): a job that is finished, or running under another
worker's live lease, is skipped, so a message delivered twice never runs a job twice at once.
A job resumed after its worker was lost reloads its checkpoint from the database and continues;
its task row is written in the same fenced transaction as its final status, so a job stores
exactly one task however often it runs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checkpoint_store import CheckpointStore
from app.config import get_settings
from app.datasets import parse
from app.db.models import Dataset, Job, Task
from app.db.session import get_engine, session_factory
from app.engine.data import ColumnSpec
from app.engine.errors import EngineError
from app.engine.metrics import reported
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainConfig, TrainingCancelled
from app.leases import Lease, LeaseLost, claim
from app.queue import D90_HELP_TASK, TRAIN_TASK
from app.task_records import row_from_artifact
from workers.celery_app import app
from workers.d90 import help_search, run_d90_job
from workers.reporter import JobReporter

log = logging.getLogger("kilotask.worker")


def _labelled(ds: Dataset):
    return parse(
        ds.content, ds.filename, ColumnSpec(ds.text_column, ds.text_pair_column, ds.label_column)
    )


_NO_CHECKPOINT = {"checkpoint": None, "checkpoint_ref": None}  # an ended job resumes nothing


def _failed(reporter: JobReporter, exc: BaseException, values: dict | None = None) -> bool:
    """Record a crash on the job if the database lets us (then Celery logs it); False if not:
    the lease then runs out and the job is requeued, so its checkpoint must stay."""
    try:
        reporter.finish("failed", "internal_error", f"{type(exc).__name__}: {exc}", values=values)
    except Exception as again:
        log.warning("job %s: could not record the failure: %s", reporter.job_id, again)
        return False
    return True


def run_job(job_id: str, device: str = "cpu") -> str:
    """Claim one job and run (or resume) it to its end; returns the final status, or why it
    was not run ('taken', 'finished', 'gone', 'lease_lost')."""
    settings = get_settings()
    lease = claim(get_engine(settings), job_id, settings.job_lease_s, settings.db_retry_s)
    if isinstance(lease, str):
        log.info("job %s not run here: %s", job_id, lease)
        return lease
    with lease.kept_alive(), session_factory(settings)() as session:
        job = session.get(Job, job_id)
        try:
            if job.kind == "d90":
                return _run_search(session, job, lease, device)
            return _run_training(session, job, lease, settings.checkpoint_every, device)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lease_lost"


def _run_training(
    session: Session, job: Job, lease: Lease, checkpoint_every: int, device: str
) -> str:
    hp = dict(job.hyperparameters)
    storage_dtype = hp.pop("storage_dtype", "float32")
    max_length = hp.pop("max_length", 128)
    config = TrainConfig(method=job.method, checkpoint_every=checkpoint_every, **hp)
    train_ds = session.get(Dataset, job.train_dataset_id)
    eval_ds = session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id else None
    store = CheckpointStore(get_settings().checkpoint_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if job.method == "full":  # hundreds of MB: a file in the shared store, not the row
            ref = store.name(job.id, lease.attempt)
            ckpt = store.start(job.id, lease.attempt, job.checkpoint_ref)
            reporter = JobReporter(lease, ckpt, checkpoint_ref=ref)
        else:
            ckpt = Path(tmp) / "job.ckpt"
            if job.checkpoint is not None:
                ckpt.write_bytes(job.checkpoint)
            reporter = JobReporter(lease, ckpt)
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
                job.task_type,
                dict(job.options or {}),
            )
            session.commit()  # end the read transaction: training holds no connection
            outcome = train_task(request, reporter, str(ckpt), device)
        except TrainingCancelled:
            reporter.finish("cancelled", values=_NO_CHECKPOINT)
            store.remove(job.id)
            return "cancelled"
        except EngineError as exc:  # bad input or config: retrying cannot help
            reporter.finish("failed", exc.code, str(exc), values=_NO_CHECKPOINT)
            store.remove(job.id)
            return "failed"
        except LeaseLost:
            raise
        except Exception as exc:
            if _failed(reporter, exc, _NO_CHECKPOINT):
                store.remove(job.id)
            raise
    metrics = reported(outcome.metrics)  # the job shows them all; the task keeps what its file does
    artifact = outcome.artifact
    reporter.finish("succeeded", values={"metrics": metrics, **_NO_CHECKPOINT},
                    also=_task_storer(job, artifact))  # fmt: skip
    store.remove(job.id)
    return "succeeded"


def _run_search(session: Session, job: Job, lease: Lease, device: str) -> str:
    reporter = JobReporter(lease)
    try:
        artifact, metrics = run_d90_job(session, job, reporter, _labelled, device)
    except TrainingCancelled:
        reporter.finish("cancelled")
        return "cancelled"
    except EngineError as exc:
        reporter.finish("failed", exc.code, str(exc))
        return "failed"
    except LeaseLost:
        raise
    except Exception as exc:
        session.rollback()
        _failed(reporter, exc)
        raise
    # a search keeps its state (its record of runs) for reuse by later searches
    reporter.finish("succeeded", values={"metrics": metrics}, also=_task_storer(job, artifact))
    return "succeeded"


def _task_storer(job: Job, artifact) -> Callable[[Session], dict]:
    """Store the job's task in the same fenced transaction as its final status: a job whose
    lease was lost stores nothing, and the unique job_id keeps it to one task."""

    def store(session: Session) -> dict:
        if artifact is None:
            return {}
        task_id = session.scalar(select(Task.id).where(Task.job_id == job.id))
        if task_id is None:
            row = row_from_artifact(artifact, job.tenant_id, job.id)
            session.add(row)
            session.flush()
            task_id = row.id
        return {"task_id": task_id}

    return store


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
