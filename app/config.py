"""Service settings: one object, read from KILOTASK_* environment variables (and .env).

Read by the API, the database layer, the workers and the CLI; never by app/engine, which gets
plain dataclass configs instead. The embedded default needs no services: SQLite and a
filesystem broker under `data_dir`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILOTASK_", env_file=".env", extra="ignore")

    data_dir: Path = Path.home() / ".kilotask"
    database_url: str = ""  # default: sqlite under data_dir
    broker_url: str = ""  # default: a filesystem broker under data_dir
    default_model: str = "minilm-l6"
    max_upload_mb: float = Field(default=50.0, gt=0)
    max_rows: int = Field(default=1_000_000, gt=0)
    longest_job_s: int = Field(default=6 * 3600, gt=0)
    visibility_timeout_s: int = Field(default=12 * 3600, gt=0)
    checkpoint_every: int = Field(default=50, gt=0)
    run_lease_s: float = Field(default=120.0, gt=0)  # a d90 run silent this long is taken back
    serving_cache_mb: float = Field(default=1024.0, gt=0)  # materialised tasks kept in memory
    serving_max_batch: int = Field(default=32, gt=0)
    serving_max_wait_ms: float = Field(default=5.0, ge=0)
    serving_workers: int = Field(default=0, ge=0)  # concurrent model calls; 0: one per core on CPU
    # resident lowrank tasks (factors only: 75 KB each for MiniLM-L6 at rank 4; 4096 MB: 55,000)
    serving_lowrank_cache_mb: float = Field(default=4096.0, gt=0)

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'kilotask.db'}"
        if self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.visibility_timeout_s <= self.longest_job_s:
            raise ValueError(
                "KILOTASK_VISIBILITY_TIMEOUT_S must exceed KILOTASK_LONGEST_JOB_S, or Redis "
                "redelivers a still-running job to a second worker"
            )
        return self

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
