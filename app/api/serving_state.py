"""The process's serving state, made on first use: the runtime (base models, task caches,
batcher), the task lookup cache, and the poller that keeps both in step with the other API
replicas (app/api/replica_sync.py)."""

from __future__ import annotations

import threading

from app.api.replica_sync import ReplicaSync
from app.api.task_lookup import TaskLookup
from app.config import Settings

_LOCK = threading.Lock()  # the poller thread may make the runtime while a request does


def serving_runtime(state, settings: Settings):
    """The ServingRuntime of this app (`request.app.state`)."""
    if getattr(state, "serving", None) is None:
        from app.serving.runtime import ServingRuntime  # torch only once inference is used

        with _LOCK:
            if getattr(state, "serving", None) is None:
                state.serving = ServingRuntime.create(
                    settings.serving_cache_mb,
                    settings.serving_max_batch,
                    settings.serving_max_wait_ms,
                    settings.serving_workers,
                    settings.serving_lowrank_cache_mb,
                    pin_share=settings.serving_pin_share,
                    max_queue=settings.serving_max_queue,
                    max_batch_tokens=settings.serving_max_batch_tokens,
                    max_queue_ms=settings.serving_max_queue_ms,
                    lowrank_dtype=settings.serving_lowrank_dtype,
                )
    return state.serving


def task_lookup(state, settings: Settings) -> TaskLookup:
    """The app's lookup cache; its replica poller starts with it."""
    if getattr(state, "task_lookup", None) is None:
        with _LOCK:
            if getattr(state, "task_lookup", None) is None:
                lookup = TaskLookup(settings.serving_lookup_ttl_s)
                state.replica_sync = ReplicaSync(
                    settings, lookup, state, lambda owner: serving_runtime(owner, settings)
                )
                state.replica_sync.start()
                state.task_lookup = lookup
    return state.task_lookup
