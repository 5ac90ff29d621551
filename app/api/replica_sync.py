"""Replicas that agree (issue 25): every API process keeps tasks in memory (the lookup cache,
resident and pinned tasks), so a delete, pin or unpin through one replica must reach the others.
Each change writes a `task_event` row in its own transaction; each replica polls the rows after
the last one it applied, every KILOTASK_REPLICA_SYNC_S (0.5 s), and applies them in order. Polling
one indexed table works on SQLite and PostgreSQL alike and needs no extra service; a replica that
misses events (its database was down) still drops a cached lookup after
KILOTASK_SERVING_LOOKUP_TTL_S. A replica starts from the newest event: pins made before it
started are not replayed (pins are memory, not stored state)."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from app.api.task_lookup import TaskLookup
from app.config import Settings
from app.db.models import Task, TaskEvent, utcnow
from app.db.session import session_factory
from app.records.tasks import artifact_from_row

log = logging.getLogger("kilotask.replicas")
KEEP = timedelta(days=1)  # events older than this are pruned
PRUNE_EVERY = 1000  # polls


class ReplicaSync:
    def __init__(
        self,
        settings: Settings,
        lookup: TaskLookup,
        owner: object,
        make_serving: Callable[[object], object],
    ) -> None:
        """`owner`: the app state that holds the serving runtime (as `serving`, once made;
        `make_serving(owner)` makes it). Held weakly: the poller stops when the app is gone."""
        self.settings, self.lookup = settings, lookup
        self._owner, self._make_serving = weakref.ref(owner), make_serving
        self.last_id: int | None = None
        self.applied = 0
        self.failing = False  # the last poll could not read the database
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="kilotask-replica-sync", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        polls = 0
        while not self._stop.wait(0 if self.last_id is None else self.settings.replica_sync_s):
            if self._owner() is None:  # the app was dropped (tests make many)
                return
            try:
                self.poll_once()
                polls += 1
                if polls % PRUNE_EVERY == 0:
                    self._prune()
            except SQLAlchemyError as exc:  # the database is away: try again next time
                if not self.failing:  # once per outage, not every poll
                    log.warning("replica sync could not read task events: %s", exc)
                self.failing = True
                continue
            except Exception:
                log.exception("replica sync failed to apply an event; it goes on with the next")
            self.failing = False

    def poll_once(self) -> int:
        """Apply the events after the last one applied; returns how many."""
        with session_factory(self.settings)() as session:
            if self.last_id is None:  # start from now: earlier events are already in the rows
                self.last_id = session.scalar(select(func.max(TaskEvent.id))) or 0
                return 0
            events = session.scalars(
                select(TaskEvent)
                .where(TaskEvent.id > self.last_id)
                .order_by(TaskEvent.id)
                .limit(1000)
            ).all()
            for event in events:
                try:
                    self._apply(session, event)
                except Exception:  # one event (a pin over budget here) must not stop the rest
                    log.exception("replica sync: event %s (%s) failed", event.id, event.kind)
                self.last_id = event.id
                self.applied += 1
            return len(events)

    def _apply(self, session, event: TaskEvent) -> None:
        owner = self._owner()
        if owner is None:
            return
        serving = getattr(owner, "serving", None)
        if event.kind == "deleted":
            self.lookup.forget(event.task_id)
            if serving is not None:
                serving.release_pin(event.digest, event.tenant_id)
        elif event.kind == "pinned":
            row = session.get(Task, event.task_id)
            if row is not None:  # deleted since: nothing to pin
                self._make_serving(owner).pin(artifact_from_row(row), event.tenant_id)
        elif event.kind == "unpinned" and serving is not None:
            serving.release_pin(event.digest, event.tenant_id)

    def _prune(self) -> None:
        with session_factory(self.settings)() as session:
            session.execute(delete(TaskEvent).where(TaskEvent.created_at < utcnow() - KEEP))
            session.commit()
