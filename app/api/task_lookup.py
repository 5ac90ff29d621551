"""The inference routes' task lookups, cached in the process (issue 24).

A task row never changes once stored (its numbers are its identity), so what an inference
request needs from the database is only "does this tenant still own task X". Asking on every
request cost a worker-thread round trip and a query (with the artifact rebuilt and its digest
rehashed each time); here an owned task is trusted for `ttl_s` after it was last read, and read
again after that. A delete through this process forgets the task at once; one through
another replica reaches this one as a task event within KILOTASK_REPLICA_SYNC_S (0.5 s,
app/api/replica_sync.py), and `ttl_s` (KILOTASK_SERVING_LOOKUP_TTL_S, 300 s) bounds what a
replica that cannot read events serves. Unknown ids are never cached, so a tenant probing ids
costs queries off the event loop, not memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import undefer

from app.config import Settings
from app.db.models import Task
from app.db.session import session_factory
from app.engine.artifact import TaskArtifact
from app.errors import NotFoundError
from app.records.tasks import artifact_from_row


class TaskLookup:
    """task id -> (owner, artifact, when last read), least recently used evicted past
    `max_entries`."""

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 20_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[str, tuple[str, TaskArtifact, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def fresh(self, tenant_id: str, task_ids: Sequence[str]) -> dict[str, TaskArtifact] | None:
        """Every task in `task_ids` if each is cached for this tenant and was read within
        ttl_s; None when any must be read (again) from the database."""
        now = time.monotonic()
        found = {}
        with self._lock:
            for task_id in task_ids:
                entry = self._entries.get(task_id)
                if entry is None or entry[0] != tenant_id or now - entry[2] > self.ttl_s:
                    self.misses += 1
                    return None
                found[task_id] = entry[1]
                self._entries.move_to_end(task_id)
            self.hits += 1
        return found

    def load(self, settings: Settings, tenant_id: str, task_ids: Sequence[str]) -> dict:
        """Read which of `task_ids` the tenant owns (blocking: call it off the event loop),
        and the rows of those not cached yet; a task that is missing or another tenant's is a
        404 naming it."""
        with self._lock:
            entries = {i: self._entries.get(i) for i in task_ids}
            cached = {i: e[1] for i, e in entries.items() if e is not None and e[0] == tenant_id}
        with session_factory(settings)() as session:
            owned = set(
                session.scalars(
                    select(Task.id).where(Task.id.in_(task_ids), Task.tenant_id == tenant_id)
                )
            )
            for task_id in task_ids:
                if task_id not in owned:
                    raise NotFoundError(f"task '{task_id}' not found", code="task_not_found")
            new = [i for i in task_ids if i not in cached]
            rows = session.scalars(
                select(Task).where(Task.id.in_(new)).options(undefer(Task.theta), undefer(Task.lam))
            ) if new else []  # fmt: skip
            # rows are immutable: a cached artifact stays (its digest is computed already)
            found = {**cached, **{row.id: artifact_from_row(row) for row in rows}}
        now = time.monotonic()
        with self._lock:
            for task_id, art in found.items():
                self._entries[task_id] = (tenant_id, art, now)
                self._entries.move_to_end(task_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return found

    def remember(self, tenant_id: str, task_id: str, art: TaskArtifact) -> None:
        """An owned task just read by another route (a pin): served without a read."""
        with self._lock:
            self._entries[task_id] = (tenant_id, art, time.monotonic())
            self._entries.move_to_end(task_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._entries.pop(task_id, None)
