"""`kilotask serve` runs its local worker as a supervised child process.

When the worker exits (crash, OOM kill, `kill -9`), the supervisor reaps it (no zombie), tells
the sweeper so the worker's job is requeued at once (it resumes from its checkpoint), and starts
a new worker after a backoff that doubles from 1 s up to 30 s and resets once a worker has
stayed up for a minute. /healthz reads `status()`: 503 once no worker has been up for
settings.worker_down_grace_s.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("kilotask.supervisor")

FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_S = 1.0, 30.0, 60.0


class WorkerSupervisor:
    def __init__(
        self,
        command: Sequence[str],
        on_exit: Callable[[int], None] = lambda pid: None,
        popen_options: dict | None = None,
    ) -> None:
        self.command, self.on_exit = list(command), on_exit
        self.popen_options = popen_options or {}
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._down_since: float | None = time.monotonic()  # None while a worker runs
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kilotask-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        return self

    def status(self) -> dict:
        """state: 'up' (a worker process runs), 'restarting' (it died; a new one is due) or
        'stopped'; down_for_s: how long no worker has been running."""
        with self._lock:
            proc, down_since = self._proc, self._down_since
        if self._stopping.is_set():
            state = "stopped"
        else:
            state = "up" if proc is not None and down_since is None else "restarting"
        down_for = 0.0 if down_since is None else time.monotonic() - down_since
        return {
            "state": state,
            "pid": proc.pid if proc is not None and down_since is None else None,
            "restarts": self.restarts,
            "down_for_s": round(down_for, 1),
        }

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = subprocess.Popen(self.command, **self.popen_options)
            except OSError as exc:
                log.error("could not start the worker: %s", exc)
            else:
                with self._lock:
                    self._proc, self._down_since = proc, None
                code = proc.wait()  # reaps it: a dead worker never lingers as a zombie
                with self._lock:
                    self._down_since = time.monotonic()
                if self._stopping.is_set():
                    return
                if time.monotonic() - started >= STABLE_S:
                    backoff = FIRST_BACKOFF_S
                log.warning(
                    "worker pid %d exited (%s); restarting in %.0fs", proc.pid, code, backoff
                )
                try:
                    self.on_exit(proc.pid)
                except Exception as exc:
                    log.warning("after the worker's exit: %s", exc)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.restarts += 1


_current: WorkerSupervisor | None = None


def install(supervisor: WorkerSupervisor | None) -> None:
    """Make `supervisor` the one /healthz reports (serve runs the API in the same process)."""
    global _current
    _current = supervisor


def current() -> WorkerSupervisor | None:
    return _current
