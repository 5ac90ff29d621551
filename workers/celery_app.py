"""The worker's Celery app: `celery -A workers.celery_app worker -Q gpu -P solo` (one process
per GPU: CUDA does not survive fork). `kilotask worker` runs exactly that."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.queue import celery_config


def make_celery() -> Celery:
    app = Celery("kilotask", include=["workers.tasks"])
    app.conf.update(celery_config(get_settings()))
    return app


app = make_celery()
