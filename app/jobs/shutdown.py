"""A worker asked to stop (SIGTERM: `serve` stopping, a deploy) hands its job back instead of
finishing it or dying with it: the trainer checkpoints at its next step, the job goes back to
`queued` with its lease released and its attempt not counted as a lost worker, and it is sent
again, so the next worker resumes it at once from that checkpoint.

The flag is process-wide: Celery's `worker_shutting_down` signal sets it (workers/celery_app.py).
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    """For tests that run jobs in-process after a shutdown was simulated."""
    _requested.clear()
