"""Full fine-tuning checkpoints live in the shared checkpoint folder, not in the job row; a job
that lost its worker resumes from the previous attempt's file; an ended job leaves no file."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, undefer

from app.db.models import Dataset, Job, JobEvent, utcnow
from app.db.session import get_engine
from app.jobs.checkpoint_store import CheckpointStore
from app.jobs.leases import LeaseLost, claim
from app.jobs.reporter import JobReporter
from app.jobs.runner import run_job
from app.jobs.sweeper import sweep
from app.jobs.training import run_training
from workers.tasks import JOB_RUNNERS


def _full_job(settings, dataset_id: str, model: str) -> str:
    with Session(get_engine(settings)) as session:
        tenant_id = session.get(Dataset, dataset_id).tenant_id
        job = Job(tenant_id=tenant_id, model=model, method="full", dim=0, seed=0,
                  train_dataset_id=dataset_id, eval_dataset_id=dataset_id, request_hash="h",
                  hyperparameters={"max_steps": 400, "batch_size": 8, "learning_rate": 1e-3,
                                   "eval_every": 400, "max_length": 16})  # fmt: skip
        session.add(job)
        session.commit()
        return job.id


def _row(settings, job_id: str) -> Job:
    with Session(get_engine(settings)) as session:  # the checkpoint blob is a deferred column
        return session.get(Job, job_id, options=[undefer(Job.checkpoint)])


def test_a_full_job_checkpoints_to_the_store_and_resumes_from_it(
    settings, dataset, tiny_bert, monkeypatch
):
    settings = settings.model_copy(update={"checkpoint_every": 5})
    store = CheckpointStore(settings.checkpoint_dir)
    job_id = _full_job(settings, dataset, str(tiny_bert))
    seen: dict = {}
    on_checkpoint = JobReporter.on_checkpoint

    def checkpoint_then_lose_the_job(reporter: JobReporter, step: int) -> None:
        """After the second checkpoint is written, do what a sweeper does once the worker
        looks dead: in the training thread itself, so the job cannot finish first."""
        on_checkpoint(reporter, step)
        row = _row(settings, job_id)
        if seen or row.step < 10:
            return
        seen.update(ref=row.checkpoint_ref, blob=row.checkpoint,
                    size=store.path(row.checkpoint_ref).stat().st_size)  # fmt: skip
        with Session(get_engine(settings)) as session:
            past = utcnow() - timedelta(seconds=5)
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=past))
            session.commit()
        assert sweep(settings).requeued == [job_id]

    monkeypatch.setattr(JobReporter, "on_checkpoint", checkpoint_then_lose_the_job)
    lease = claim(get_engine(settings), job_id, settings.job_lease_s, settings.db_retry_s)
    with Session(get_engine(settings), expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        with pytest.raises(LeaseLost):  # the job was requeued under it: it writes nothing more
            run_training(session, job, lease, settings, "cpu")
    monkeypatch.setattr(JobReporter, "on_checkpoint", on_checkpoint)
    assert seen["ref"] == f"{job_id}.attempt-1.ckpt" and seen["blob"] is None
    assert seen["size"] > 100_000  # the weights and Adam moments are in the file, not the row
    queued = _row(settings, job_id)
    assert queued.status == "queued" and queued.checkpoint_ref == seen["ref"]

    assert run_job(job_id, "cpu", JOB_RUNNERS, settings) == "succeeded"
    done = _row(settings, job_id)
    assert done.status == "succeeded" and done.attempts == 2
    assert done.checkpoint is None and done.checkpoint_ref is None
    assert list(store.folder.glob(f"{job_id}*")) == []  # an ended job leaves no file
    with Session(get_engine(settings)) as session:
        starts = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "status")
        ).all()
    resumed = [e for e in starts if e.get("attempt") == 2]
    assert resumed and resumed[0]["resumed_from_step"] >= 10
