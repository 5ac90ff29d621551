"""Tables. A trained task is stored as just its numbers (θ_d, λ) plus metadata and metrics;
datasets are stored in the database so a worker on another machine can read them.

Singular snake_case tables, `_at` timestamps, `<table>_id` foreign keys, string ids with a
readable prefix (`job_…`, `task_…`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Tenant(Base):
    __tablename__ = "tenant"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """Only the sha256 of a key is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Dataset(Base):
    __tablename__ = "dataset"
    __table_args__ = (Index("ix_dataset_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded when read
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list] = mapped_column(JSON)
    text_column: Mapped[str] = mapped_column(String(255))
    text_pair_column: Mapped[str | None] = mapped_column(String(255))
    label_column: Mapped[str | None] = mapped_column(String(255))
    label_counts: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A training run. `checkpoint` holds the latest trainer checkpoint (a few KB for subspace
    methods) so any worker can resume it after a crash. A running job is leased to one worker
    (`lease_owner` until `lease_expires_at`); the sweeper requeues it when the lease runs out."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_job_listing", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="train")
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    model: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(10))
    dim: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    train_dataset_id: Mapped[str] = mapped_column(ForeignKey("dataset.id"))
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id"))
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    options: Mapped[dict | None] = mapped_column(JSON)  # method options (lowrank: rank, targets)
    task_type: Mapped[str | None] = mapped_column(String(16))  # None: classification
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # attempts is also the fencing token: each claim by a worker bumps it, and every write a
    # worker makes checks it (app/jobs/leases.py), so a worker that lost its lease writes nothing.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255))  # "host:pid" of the worker
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # subspace methods only; deferred: lists and reads of a job never load it
    checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # full fine-tuning: the checkpoint's file name in settings.checkpoint_dir (too big for a row)
    checkpoint_ref: Mapped[str | None] = mapped_column(String(255))
    # the step the checkpoint holds (`step` is the latest progress, ahead of it)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    task_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobEvent(Base):
    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(20))  # status | progress | metrics | message
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class D90Run(Base):
    """One run (kind, d, lr) of a d90 search that several workers may share: the search posts
    the runs it needs, any worker claims one by flipping `status` from pending to running,
    beats `heartbeat_at` while it trains, and stores the metric and the task file. A run whose
    heartbeat stops (its worker died) goes back to pending."""

    __tablename__ = "d90_run"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))  # run_key(kind, d, lr)
    kind: Mapped[str] = mapped_column(String(10))
    d: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10), default="pending")  # running | done
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metric: Mapped[float | None] = mapped_column(Float)
    task: Mapped[bytes | None] = mapped_column(LargeBinary)  # the run's task file, if any


class Task(Base):
    """A trained task: (model, seed, θ_d, λ) plus what is needed to use and verify it.
    `job_id` is unique, so a job redelivered after a crash cannot store a second task."""

    __tablename__ = "task"
    __table_args__ = (Index("ix_task_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("task"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("job.id"), unique=True)
    model: Mapped[str] = mapped_column(String(255))
    base_digest: Mapped[str] = mapped_column(String(64))
    spec: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(10))
    dim: Mapped[int] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(Integer)
    # deferred: a list (or a tenant check) never loads the vectors (56 MB each for a large d)
    theta: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    lam: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    dtype: Mapped[str] = mapped_column(String(10))
    label_names: Mapped[list] = mapped_column(JSON)
    text_column: Mapped[str] = mapped_column(String(255))
    text_pair_column: Mapped[str | None] = mapped_column(String(255))
    max_length: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int | None] = mapped_column(Integer)  # lowrank only
    targets: Mapped[str | None] = mapped_column(String(255))  # lowrank only, comma-separated
    # SAID only: "layer" or "tensor" (None: a task from before groupings, one λ per tensor)
    said_groups: Mapped[str | None] = mapped_column(String(16))
    # "classification" or "regression" (None: a task from before regression, a classifier)
    task_type: Mapped[str | None] = mapped_column(String(16))
    target_stats: Mapped[list | None] = mapped_column(JSON)  # regression: [mean, std]
    # how it was trained: {"lr", "probe": {rate: held-out loss}} (None: before recipes)
    recipe: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TaskEvent(Base):
    """A change to a task that every API replica must apply to its own memory (its lookup
    cache, its resident and pinned tasks): written in the transaction of the change, read by
    each replica's poller in id order (app/api/replica_sync.py), pruned after a day."""

    __tablename__ = "task_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(40))
    digest: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # deleted | pinned | unpinned
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
