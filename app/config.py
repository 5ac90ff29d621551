"""Service settings: one object, read from KILOTASK_* environment variables (and .env).

Read by the API, the database layer, the workers and the CLI; never by app/engine, which gets
plain dataclass configs instead. The embedded default needs no services: SQLite and a
filesystem broker under `data_dir`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILOTASK_", env_file=".env", extra="ignore")

    data_dir: Path = Path.home() / ".kilotask"
    database_url: str = ""  # default: sqlite under data_dir
    broker_url: str = ""  # default: a filesystem broker under data_dir
    default_model: str = "minilm-l6"
    # where installed base models live (mpnet-base; app/engine/mpnet.py reads the same variable);
    # besides the registered ids, tenants may name folders under it (None: none)
    models_dir: Path | None = Path.home() / ".kilotask" / "models"
    allow_hub: bool = False  # tenants may name hub ids (downloaded on first use)
    max_upload_mb: float = Field(default=50.0, gt=0)  # a data set or task file upload
    max_body_mb: float = Field(default=8.0, gt=0)  # any other request body (JSON)
    max_rows: int = Field(default=1_000_000, gt=0)
    max_labels: int = Field(default=1000, ge=2)  # classes per task (import and training)
    # Redis hands an unacknowledged message to another worker after this long; a job still
    # running under a live lease is then skipped, so any value is safe (leases, not this,
    # bring back a dead worker's job)
    visibility_timeout_s: int = Field(default=12 * 3600, gt=0)
    checkpoint_every: int = Field(default=50, gt=0)
    # full fine-tuning checkpoints (hundreds of MB) go here, not into the job row; every worker
    # must see the same folder (a shared volume). Default: data_dir/checkpoints
    checkpoint_dir: Path | None = None
    run_lease_s: float = Field(default=120.0, gt=0)  # a d90 run silent this long is taken back
    serving_cache_mb: float = Field(default=1024.0, gt=0)  # materialised tasks kept in memory
    serving_max_batch: int = Field(default=32, gt=0)
    # how long a free model worker waits for company before starting a batch; 0: at once
    # (requests arriving while the workers are busy still batch). 5 ms cost 22 % at 8 clients
    serving_max_wait_ms: float = Field(default=0.0, ge=0)
    serving_workers: int = Field(default=0, ge=0)  # concurrent model calls; 0: one per core on CPU
    # inputs waiting per base model before /v1/infer answers 503 at once; 0: 4 batches per worker
    serving_max_queue: int = Field(default=0, ge=0)
    # ... and at most this much model work (waiting inputs x recent seconds per input / workers)
    serving_max_queue_ms: float = Field(default=1000.0, ge=0)
    # padded tokens per model call (rows x the longest row), besides serving_max_batch rows
    serving_max_batch_tokens: int = Field(default=8192, gt=0)
    # resident lowrank tasks (factors only: 75 KB each for MiniLM-L6 at rank 4; 4096 MB: 55,000)
    serving_lowrank_cache_mb: float = Field(default=4096.0, gt=0)
    # resident lowrank factors at rest (used in float32 either way); float16 halves each task
    serving_lowrank_dtype: Literal["float32", "float16"] = "float32"
    # each tenant's pins may take this share of a serving budget; all pins together 1 - share
    serving_pin_share: float = Field(default=0.25, gt=0, le=0.5)
    # every API replica applies the others' task deletes, pins and unpins (the task_event
    # table) this often; an owned task is served without asking the database again for at
    # most serving_lookup_ttl_s (a bound for when events cannot be read; 0: ask each time)
    replica_sync_s: float = Field(default=0.5, gt=0, le=60)
    serving_lookup_ttl_s: float = Field(default=300.0, ge=0, le=3600)
    # Reliability (README "Reliability"): a running job's worker renews its lease every
    # job_lease_s / 6; a sweeper (in every worker and in `serve`) requeues a job whose lease
    # expired, and a queued job whose broker message is gone after requeue_queued_after_s.
    job_lease_s: float = Field(default=60.0, ge=1)
    sweep_every_s: float = Field(default=15.0, gt=0)
    requeue_queued_after_s: float = Field(default=60.0, gt=0)
    max_worker_losses: int = Field(default=3, ge=1)  # then the job fails with worker_lost
    db_retry_s: float = Field(default=300.0, ge=0)  # a worker retries its writes this long
    health_min_free_mb: float = Field(default=100.0, ge=0)  # /healthz: free space in data_dir
    shutdown_grace_s: float = Field(default=60.0, gt=0)  # serve waits this long for its worker
    worker_down_grace_s: float = Field(default=30.0, ge=0)  # /healthz 503 after this long
    # Per-tenant limits (429 with Retry-After); 0 turns a limit off.
    tenant_max_active_jobs: int = Field(default=8, ge=0)  # queued + running jobs
    tenant_max_storage_mb: float = Field(default=2048.0, ge=0)  # data sets + tasks, per tenant
    tenant_infer_rps: float = Field(default=0.0, ge=0)  # inference requests per second

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'kilotask.db'}"
        if self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.data_dir / "checkpoints"
        return self

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
