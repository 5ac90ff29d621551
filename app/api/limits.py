"""Per-tenant limits, answered 429 with Retry-After: active jobs (counted in the database, so
every API process sees the same number) and inference requests per second (a token bucket per
tenant in this process). A limit of 0 is off."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import SettingsDep, TenantDep
from app.config import Settings
from app.db.models import Dataset, Job, Task
from app.errors import PayloadTooLargeError, RateLimitedError
from app.jobs.service import ACTIVE, too_many_active_jobs


def check_active_jobs(session: Session, settings: Settings, tenant_id: str) -> None:
    """Refuse a new job early (before the model is loaded to validate it) while the tenant
    has the maximum queued or running; `create_job` checks again, atomically."""
    limit = settings.tenant_max_active_jobs
    if not limit:
        return
    active = session.scalar(
        select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    )
    if (active or 0) >= limit:
        raise too_many_active_jobs(active, limit)


def check_storage(session: Session, tenant_id: str, adding: int, limit_mb: float) -> None:
    """413 when the tenant's data sets and tasks with `adding` more bytes would pass its
    storage quota (0: none). Counted in the database, so every API process agrees."""
    if not limit_mb:
        return
    datasets = session.scalar(
        select(func.coalesce(func.sum(func.length(Dataset.content)), 0)).where(
            Dataset.tenant_id == tenant_id
        )
    )
    tasks = session.scalar(
        select(func.coalesce(func.sum(Task.size_bytes), 0)).where(Task.tenant_id == tenant_id)
    )
    used = int(datasets) + int(tasks)
    if used + adding > limit_mb * 2**20:
        raise PayloadTooLargeError(
            f"this tenant stores {used / 2**20:.1f} MB and this adds {adding / 2**20:.2f} MB, "
            f"over its quota of {limit_mb:g} MB (KILOTASK_TENANT_MAX_STORAGE_MB): delete data "
            "sets (DELETE /v1/datasets/{id}) or tasks first",
            code="storage_quota_exceeded",
        )


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; one request takes one token."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class InferenceLimiter:
    """One bucket per tenant, burst max(1, rps)."""

    def __init__(self, rps: float) -> None:
        self.rps, self.burst = rps, max(1.0, rps)
        self.buckets: dict[str, TokenBucket] = {}
        self.lock = threading.Lock()

    def take(self, tenant_id: str) -> float:
        with self.lock:
            bucket = self.buckets.get(tenant_id)
            if bucket is None:
                bucket = self.buckets[tenant_id] = TokenBucket(self.rps, self.burst)
            return bucket.take()


async def limit_inference(request: Request, settings: SettingsDep, tenant_id: TenantDep) -> None:
    rps = settings.tenant_infer_rps
    if not rps:
        return
    state = request.app.state
    limiter = getattr(state, "infer_limiter", None)
    if limiter is None or limiter.rps != rps:
        limiter = state.infer_limiter = InferenceLimiter(rps)
    wait = limiter.take(tenant_id)
    if wait > 0:
        raise RateLimitedError(
            f"over this tenant's {rps:g} inference requests per second; retry in "
            f"{math.ceil(wait)} s, batch inputs into one /v1/infer call, or have the operator "
            "raise KILOTASK_TENANT_INFER_RPS",
            retry_after=wait,
        )


InferenceLimit = Annotated[None, Depends(limit_inference)]
