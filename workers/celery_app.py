"""The worker's Celery app: `celery -A workers.celery_app worker -Q gpu -P solo` (one process
per GPU: CUDA does not survive fork). `kilotask worker` runs exactly that.

Every worker also runs the sweeper (app/jobs/sweeper.py) on a thread, so a job whose worker died is
requeued by any surviving worker, whatever the broker's visibility timeout.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from app.config import get_settings
from app.jobs import shutdown
from app.jobs.queue import celery_config
from app.jobs.sweeper import Sweeper


def make_celery() -> Celery:
    app = Celery("kilotask", include=["workers.tasks"])
    app.conf.update(celery_config(get_settings()))
    return app


app = make_celery()
_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_) -> None:
    global _sweeper
    _sweeper = Sweeper(get_settings()).start()


@worker_shutting_down.connect
def _hand_back_the_job(**_) -> None:
    """Warm shutdown (SIGTERM) begins: the running job checkpoints and is handed back."""
    shutdown.request()


@worker_shutdown.connect
def _stop_sweeper(**_) -> None:
    if _sweeper is not None:
        _sweeper.stop()
