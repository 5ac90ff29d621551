"""The run board: how several workers share one d90 search's runs through the database.

The search's worker posts the runs it needs next (one d's learning rates) as `d90_run` rows;
it and any helper worker claim a pending row with a conditional UPDATE (pending -> running, so
two workers never take the same run, on PostgreSQL and SQLite alike), beat its heartbeat while
training, and store the metric and task file. A running row whose heartbeat is older than the
lease belongs to a dead worker and goes back to pending.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import D90Run, utcnow
from app.jobs.heartbeat import beating
from app.jobs.leases import worker_name
from app.search.plan import Run, run_key

LEASE_S = 120.0  # a run with no heartbeat for this long is taken back
BEAT_S = 10.0


@dataclass(frozen=True)
class Claimed:
    id: int
    run: Run


class RunBoard:
    def __init__(self, session: Session, job_id: str, lease_s: float = LEASE_S) -> None:
        self.session, self.job_id, self.lease_s = session, job_id, lease_s

    def post(self, runs: list[Run]) -> None:
        """Add the runs not on the board yet (a resumed search posts some twice)."""
        have = set(self.session.scalars(select(D90Run.key).where(D90Run.job_id == self.job_id)))
        for kind, d, lr in runs:
            if run_key(kind, d, lr) in have:
                continue
            self.session.add(D90Run(job_id=self.job_id, key=run_key(kind, d, lr), kind=kind,
                                    d=d, lr=lr, status="pending"))  # fmt: skip
            try:
                self.session.commit()
            except IntegrityError:  # posted meanwhile by a duplicate delivery
                self.session.rollback()

    def claim(self, keys: list[str] | None = None) -> Claimed | None:
        """Take one pending run (of `keys`, if given), or None if there is none."""
        self.requeue_stale()
        query = select(D90Run.id, D90Run.kind, D90Run.d, D90Run.lr).where(
            D90Run.job_id == self.job_id, D90Run.status == "pending"
        )
        if keys is not None:
            query = query.where(D90Run.key.in_(keys))
        for row_id, kind, d, lr in self.session.execute(query.order_by(D90Run.id)).all():
            taken = self.session.execute(
                update(D90Run)
                .where(D90Run.id == row_id, D90Run.status == "pending")
                .values(status="running", worker=worker_name(), heartbeat_at=utcnow())
            )
            self.session.commit()
            if taken.rowcount == 1:
                return Claimed(row_id, (kind, d, lr))
        return None

    def finish(self, claimed: Claimed, metric: float, task: bytes | None) -> None:
        self.session.execute(
            update(D90Run)
            .where(D90Run.id == claimed.id)
            .values(status="done", metric=metric, task=task, heartbeat_at=utcnow())
        )
        self.session.commit()

    def release(self, claimed: Claimed) -> None:
        """Give a run back (this worker could not do it): another worker will."""
        self.session.execute(
            update(D90Run).where(D90Run.id == claimed.id).values(status="pending", worker=None)
        )
        self.session.commit()

    def requeue_stale(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.lease_s)
        stale = self.session.execute(
            update(D90Run)
            .where(D90Run.job_id == self.job_id, D90Run.status == "running")
            .where(D90Run.heartbeat_at < cutoff)
            .values(status="pending", worker=None)
        )
        self.session.commit()
        return stale.rowcount

    def finished(self, keys: list[str] | None = None) -> dict[str, tuple[float, bytes | None]]:
        """Metric and task file of every finished run (of `keys`, if given), read fresh."""
        query = select(D90Run.key, D90Run.metric, D90Run.task).where(
            D90Run.job_id == self.job_id, D90Run.status == "done"
        )
        if keys is not None:
            query = query.where(D90Run.key.in_(keys))
        rows = self.session.execute(query).all()
        self.session.commit()  # end the read transaction: the next poll sees new commits
        return {key: (metric, task) for key, metric, task in rows}

    def beating(self, claimed: Claimed) -> AbstractContextManager[None]:
        """Keep the claim alive while training, from a thread with its own session."""
        bind = self.session.get_bind()

        def beat() -> bool:
            with Session(bind) as session:
                session.execute(
                    update(D90Run)
                    .where(D90Run.id == claimed.id, D90Run.status == "running")
                    .values(heartbeat_at=utcnow())
                )
                session.commit()
            return True

        return beating(min(BEAT_S, self.lease_s / 4), beat, f"d90-beat-{claimed.id}")
