"""Queue names and producers. Jobs are sent by task *name*, so the API process never imports
the worker code (or torch) to queue one."""

from __future__ import annotations

import json
import re
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
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # kombu's default is ./control
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


def _train_job_ids(messages) -> set[str]:
    """Job ids of the train messages among raw kombu messages (JSON with readable headers)."""
    ids = set()
    for raw in messages:
        try:
            headers = json.loads(raw)["headers"]
        except (ValueError, KeyError, TypeError):
            continue
        if headers.get("task") == TRAIN_TASK:
            ids.update(re.findall(r"job_[0-9a-f]+", headers.get("argsrepr", "")))
    return ids


def _read_if_there(path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # a worker took it meanwhile
        return b""


def waiting_job_ids(settings: Settings) -> set[str]:
    """Jobs whose train message waits in the gpu queue, not yet taken by a worker; the sweeper
    resends a long-queued job that is not among them. Raises if the broker is unreachable."""
    if settings.is_embedded_broker:
        folder = settings.data_dir / "broker" / "queue"
        files = folder.glob(f"*.{Queue.GPU.value}.msg") if folder.is_dir() else []
        return _train_job_ids(_read_if_there(path) for path in files)
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    # kombu keeps one list per priority step: "gpu", then "gpu\x06\x16<n>" for the others
    keys = [Queue.GPU.value, *client.keys(f"{Queue.GPU.value}\x06\x16*")]
    return _train_job_ids(raw for key in keys for raw in client.lrange(key, 0, -1))
