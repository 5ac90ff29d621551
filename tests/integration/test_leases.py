"""Leases, fenced writes and the sweeper, against SQLite and PostgreSQL, with the embedded
folder broker: claims, renewals, a worker that lost its job writing nothing, requeueing after a
lost worker or a lost message, worker_lost after max_worker_losses."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Dataset, Job, JobEvent, Task, utcnow
from app.db.session import get_engine
from app.engine.base import load_base
from app.jobs.leases import Lease, LeaseLost, claim, worker_name
from app.jobs.queue import enqueue_train, waiting_job_ids
from app.jobs.reporter import JobReporter
from app.jobs.sweeper import expire_leases_of, sweep
from app.records.keys import create_key
from app.records.tasks import task_storer
from tests.factories import make_task


@pytest.fixture()
def job_id(settings: Settings) -> str:
    """A queued job of a fresh tenant (no message sent)."""
    with Session(get_engine(settings)) as session:
        tenant, _ = create_key(session, f"lease-{utcnow().timestamp()}")
        ds = Dataset(tenant_id=tenant.id, filename="d.tsv", content=b"x", sha256="0", rows=1,
                     columns=["sentence", "label"], text_column="sentence")  # fmt: skip
        session.add(ds)
        session.flush()
        job = Job(tenant_id=tenant.id, model="m", method="said", dim=100,
                  train_dataset_id=ds.id, request_hash="h")  # fmt: skip
        session.add(job)
        session.commit()
        return job.id


def _job(settings: Settings, job_id: str) -> Job:
    with Session(get_engine(settings)) as session:
        return session.get(Job, job_id)


def _expire(settings: Settings, job_id: str) -> None:
    with Session(get_engine(settings)) as session:
        past = utcnow() - timedelta(seconds=5)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=past))
        session.commit()


def _claim(settings: Settings, job_id: str) -> Lease | str:
    return claim(get_engine(settings), job_id, settings.job_lease_s, settings.db_retry_s)


def test_one_claim_wins_and_sets_the_lease(settings, job_id):
    lease = _claim(settings, job_id)
    assert isinstance(lease, Lease) and lease.attempt == 1 and lease.owner == worker_name()
    assert _claim(settings, job_id) == "taken"  # a second delivery of the message
    job = _job(settings, job_id)
    assert job.status == "running" and job.attempts == 1 and job.lease_owner == worker_name()
    assert job.lease_expires_at is not None


def test_writes_renew_the_lease_and_stop_once_it_is_lost(settings, job_id):
    lease = _claim(settings, job_id)
    reporter = JobReporter(lease)
    reporter.on_step(3, 10, 0.5)
    assert _job(settings, job_id).step == 3
    _expire(settings, job_id)
    report = sweep(settings)  # the worker looks dead: requeued and sent again
    assert job_id in report.requeued
    assert _job(settings, job_id).status == "queued"
    with pytest.raises(LeaseLost):
        reporter.on_eval(4, {"accuracy": 0.9})
    assert _job(settings, job_id).metrics == {}  # nothing written by the old attempt
    assert job_id in waiting_job_ids(settings)

    newer = _claim(settings, job_id)
    assert newer.attempt == 2
    with pytest.raises(LeaseLost):  # the old attempt cannot overwrite the newer one either
        reporter.finish("succeeded", values={"metrics": {"eval_accuracy": 1.0}})
    JobReporter(newer).on_step(5, 10, 0.4)
    job = _job(settings, job_id)
    assert job.status == "running" and job.attempts == 2 and job.step == 5


def test_task_row_is_written_only_with_the_lease(settings, job_id, tiny_bert):
    lease = _claim(settings, job_id)
    artifact = make_task(str(tiny_bert), load_base(str(tiny_bert), 2, 0), dim=60)
    stale = JobReporter(lease)
    _expire(settings, job_id)
    sweep(settings)
    newer = _claim(settings, job_id)
    with pytest.raises(LeaseLost):
        stale.finish("succeeded", also=task_storer(_job(settings, job_id), artifact))
    with Session(get_engine(settings)) as session:
        assert session.scalar(select(Task).where(Task.job_id == job_id)) is None
    JobReporter(newer).finish("succeeded", also=task_storer(_job(settings, job_id), artifact))
    job = _job(settings, job_id)
    assert job.status == "succeeded" and job.task_id is not None and job.lease_owner is None


def test_a_live_lease_is_not_swept_and_a_heartbeat_keeps_it(settings, job_id):
    settings = settings.model_copy(update={"job_lease_s": 1.2})
    lease = _claim(settings, job_id)
    with lease.kept_alive():
        time.sleep(2.5)  # two lease lengths: only the heartbeat keeps it
        assert job_id not in sweep(settings).requeued
    assert _job(settings, job_id).status == "running" and not lease.lost.is_set()


def test_the_third_lost_worker_fails_the_job_with_worker_lost(settings, job_id):
    for attempt in (1, 2, 3):
        lease = _claim(settings, job_id)
        assert lease.attempt == attempt
        _expire(settings, job_id)
        report = sweep(settings)
    assert job_id in report.failed and job_id not in report.requeued
    job = _job(settings, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"
    assert "3 times" in job.error_message and worker_name() in job.error_message
    assert _claim(settings, job_id) == "failed"


def test_a_cancel_asked_of_a_dead_worker_ends_cancelled(settings, job_id):
    _claim(settings, job_id)
    with Session(get_engine(settings)) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
    _expire(settings, job_id)
    assert job_id in sweep(settings).cancelled
    assert _job(settings, job_id).status == "cancelled"


def test_a_queued_job_whose_message_is_lost_is_sent_again_once(settings, job_id):
    settings = settings.model_copy(update={"requeue_queued_after_s": 0.05})
    enqueue_train(settings, job_id)
    time.sleep(0.1)  # queued for longer than requeue_queued_after_s
    assert job_id not in sweep(settings).resent  # its message waits in the queue
    for path in (settings.data_dir / "broker" / "queue").glob("*.msg"):
        path.unlink()  # the broker lost it
    assert job_id in sweep(settings).resent
    assert job_id in waiting_job_ids(settings)
    assert job_id not in sweep(settings).resent


def test_serve_releases_the_leases_of_a_worker_it_saw_die(settings, job_id):
    _claim(settings, job_id)
    assert expire_leases_of(settings, "elsewhere:1") == 0
    assert expire_leases_of(settings, worker_name()) >= 1
    assert job_id in sweep(settings).requeued
    with Session(get_engine(settings)) as session:
        events = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id)).all()
    assert any("requeued" in e.get("message", "") for e in events)


def test_writes_made_while_the_database_is_down_are_kept_for_the_next(settings, job_id):
    """A failed write keeps its events and values; the next write carries them."""
    lease = _claim(settings, job_id)
    reporter = JobReporter(lease)
    good_engine = lease.engine
    lease.engine = get_engine(Settings(data_dir=settings.data_dir, database_url=_closed_pg()))
    reporter.on_step(1, 10, 0.9)
    reporter.on_step(2, 10, 0.8)  # both fail to reach the database, and are kept
    assert len(reporter._events) == 2
    lease.engine = good_engine
    reporter.on_step(10, 10, 0.1)
    with Session(get_engine(settings)) as session:
        steps = session.scalars(
            select(JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.type == "progress")
            .order_by(JobEvent.id)  # in the order written (without it PostgreSQL may not keep it)
        ).all()
    assert [e["step"] for e in steps] == [1, 2, 10]


def _closed_pg() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/none"
