"""Run one job by its id: claim it, keep its lease alive, and hand it to the runner of its kind.

A worker first claims the job (app/jobs/leases.py): a job that is finished, or running under
another worker's live lease, is skipped, so a message delivered twice never runs a job twice at
once. The runners (training here, the d90 search in app/search/job.py) are passed in by the
Celery tasks in workers/, so this layer knows no kind above it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import Job
from app.db.session import get_engine, session_factory
from app.jobs.leases import Lease, LeaseLost, claim

log = logging.getLogger("kilotask.worker")

# (session, job, its lease, settings, device) -> the job's final status
JobRunner = Callable[[Session, Job, Lease, Settings, str], str]


def run_job(
    job_id: str,
    device: str,
    runners: Mapping[str, JobRunner],
    settings: Settings | None = None,
) -> str:
    """Claim one job and run (or resume) it to its end; returns the final status, or why it
    was not run ('taken', 'finished', 'gone', 'lease_lost')."""
    settings = settings or get_settings()
    lease = claim(get_engine(settings), job_id, settings.job_lease_s, settings.db_retry_s)
    if isinstance(lease, str):
        log.info("job %s not run here: %s", job_id, lease)
        return lease
    with lease.kept_alive(), session_factory(settings)() as session:
        job = session.get(Job, job_id)
        try:
            return runners[job.kind](session, job, lease, settings, device)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lease_lost"
