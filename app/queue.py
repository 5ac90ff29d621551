"""Queue names and producers. Jobs are sent by task *name*, so the API process never imports
the worker code (or torch) to queue one."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

from celery import Celery

from app.config import Settings

TRAIN_TASK = "kilotask.train"
D90_HELP_TASK = "kilotask.d90_help"  # another worker joins a d90 search's runs


class Queue(StrEnum):
    DEFAULT = "default"
    GPU = "gpu"


def celery_config(settings: Settings) -> dict:
    """Shared by producer and workers. Long GPU jobs: late acks, one message at a time, and a
    visibility timeout longer than the longest job, else Redis hands it to a second worker."""
    options: dict = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.is_embedded_broker:
        folder = settings.data_dir / "broker"
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": options,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": Queue.DEFAULT.value,
        "task_routes": {task: {"queue": Queue.GPU.value} for task in (TRAIN_TASK, D90_HELP_TASK)},
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
    }


@lru_cache(maxsize=4)
def _producer(settings_json: str) -> Celery:
    settings = Settings.model_validate_json(settings_json)
    app = Celery("kilotask-producer")
    app.conf.update(celery_config(settings))
    return app


def enqueue_train(settings: Settings, job_id: str) -> None:
    _producer(settings.model_dump_json()).send_task(TRAIN_TASK, args=[job_id], queue=Queue.GPU)


def enqueue_d90_help(settings: Settings, job_id: str) -> None:
    _producer(settings.model_dump_json()).send_task(D90_HELP_TASK, args=[job_id], queue=Queue.GPU)


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the gpu queue (Redis only), for /metrics."""
    if not settings.broker_url.startswith("redis"):
        return None
    import redis

    return int(redis.Redis.from_url(settings.broker_url, socket_timeout=2).llen(Queue.GPU.value))
