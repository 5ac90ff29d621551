"""A heartbeat thread: the one way a worker keeps a claim alive while it trains (a job's lease,
a d90 run's claim)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("kilotask.heartbeat")


@contextmanager
def beating(every_s: float, beat: Callable[[], bool], name: str) -> Iterator[None]:
    """Call beat() every `every_s` seconds while the body runs, until it returns False (the
    claim is gone). A beat that raises (database down) is logged, and the next one tries again."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                if not beat():
                    return
            except Exception as exc:
                log.warning("%s: heartbeat failed: %s: %s", name, type(exc).__name__, exc)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
