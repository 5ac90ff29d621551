"""The Celery tasks: each takes a job id and hands it to app/ (app/jobs/runner.py claims the
job and runs it by its kind). Their names are the queue's contract (app/jobs/queue.py): messages
queued by an older release still run."""

from __future__ import annotations

from app.config import get_settings
from app.db.session import session_factory
from app.jobs.queue import D90_HELP_TASK, TRAIN_TASK
from app.jobs.runner import JobRunner, run_job
from app.jobs.training import run_training
from app.search.job import help_search, run_search
from workers.celery_app import app

JOB_RUNNERS: dict[str, JobRunner] = {"train": run_training, "d90": run_search}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(job_id: str) -> str:
    """Run (or resume) the job `job_id`, training or d90 search."""
    return run_job(job_id, _device(), JOB_RUNNERS)


@app.task(name=D90_HELP_TASK, acks_late=True, reject_on_worker_lost=True)
def d90_help(job_id: str) -> int:
    """Join a d90 search: do its pending runs, if any are left by the time this runs."""
    settings = get_settings()
    with session_factory(settings)() as session:
        return help_search(session, job_id, settings, _device())
