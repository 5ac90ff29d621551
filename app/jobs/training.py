"""The training job: a job's datasets and hyperparameters through app.engine.train_task.

A job resumed after its worker was lost reloads its checkpoint (from the row, or for full
fine-tuning from the shared checkpoint store) and continues; its task row is written in the
same fenced transaction as its final status, so a job stores exactly one task however often it
runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Dataset, Job
from app.engine.errors import EngineError
from app.engine.metrics import reported
from app.engine.pipeline import TrainRequest, train_task
from app.engine.trainer import TrainConfig, TrainingCancelled
from app.jobs import shutdown
from app.jobs.checkpoint_store import CheckpointStore
from app.jobs.leases import Lease, LeaseLost
from app.jobs.reporter import JobReporter
from app.records.datasets import labelled
from app.records.tasks import task_storer

_NO_CHECKPOINT = {"checkpoint": None, "checkpoint_ref": None}  # an ended job resumes nothing


def run_training(session: Session, job: Job, lease: Lease, settings: Settings, device: str) -> str:
    """Train (or resume) `job` under `lease`; returns its final status."""
    hp = dict(job.hyperparameters)
    storage_dtype = hp.pop("storage_dtype", "float32")
    max_length = hp.pop("max_length", 128)
    hp["patience"] = hp.get("patience") or None  # 0: never stop early
    config = TrainConfig(method=job.method, checkpoint_every=settings.checkpoint_every, **hp)
    train_ds = session.get(Dataset, job.train_dataset_id)
    eval_ds = session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id else None
    store = CheckpointStore(settings.checkpoint_dir)
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
                labelled(train_ds),
                labelled(eval_ds) if eval_ds else None,
                job.dim,
                job.seed,
                max_length,
                storage_dtype,
                config,
                job.task_type,
                dict(job.options or {}),
                holdout=True,
            )
            session.commit()  # end the read transaction: training holds no connection
            outcome = train_task(request, reporter, str(ckpt), device)
        except TrainingCancelled:
            if shutdown.requested():  # the worker is stopping: hand the job to the next one
                step = reporter.checkpoint_step
                reporter.hand_back(f"worker {lease.owner} is shutting down: the job goes back "
                                   f"to the queue and resumes from step {step}")  # fmt: skip
                return "handed_back"
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
            if reporter.finish_crashed(exc, _NO_CHECKPOINT):
                store.remove(job.id)
            raise
    metrics = reported(outcome.metrics)  # the job shows them all; the task keeps what its file does
    reporter.finish("succeeded", values={"metrics": metrics, **_NO_CHECKPOINT},
                    also=task_storer(job, outcome.artifact, outcome.recipe))  # fmt: skip
    store.remove(job.id)
    return "succeeded"
