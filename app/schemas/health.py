from typing import Literal

from pydantic import BaseModel, Field


class WorkerHealth(BaseModel):
    state: Literal["up", "restarting", "down", "stopped"]
    pid: int | None = None
    restarts: int = Field(description="how often `serve` has restarted its local worker")
    down_for_s: float = Field(description="seconds without a running worker")


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str = Field(description="'ok' or 'error: <what failed>'")
    broker: str = Field(description="'ok' or 'error: <what failed>'")
    storage: str = Field(
        description="'ok' or 'error: <what failed>': the data folder has room "
        "(KILOTASK_HEALTH_MIN_FREE_MB) and takes a write"
    )
    worker: WorkerHealth | None = Field(
        default=None, description="the local worker of `kilotask serve`; absent without one"
    )
