"""Per-tenant limits, answered 429 with Retry-After: active jobs (counted in the database, so
every API process sees the same number) and inference requests per second (a token bucket per
tenant, kept in Redis when Redis is the broker, so that it holds across API replicas; in the
process otherwise, or while Redis does not answer). A limit of 0 is off."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
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

    async def take(self, tenant_id: str) -> float:
        return self.take_now(tenant_id)

    def take_now(self, tenant_id: str) -> float:
        """0 if the tenant's bucket had a token (now taken), else the seconds until one."""
        with self.lock:
            bucket = self.buckets.get(tenant_id)
            if bucket is None:
                bucket = self.buckets[tenant_id] = TokenBucket(self.rps, self.burst)
            return bucket.take()


# One bucket per tenant in a Redis hash, updated atomically on the server's clock.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class SharedInferenceLimiter:
    """The same buckets in Redis, shared by every replica on that Redis (async: no blocking
    call on the event loop). Falls back to this process's buckets while Redis fails."""

    def __init__(self, rps: float, url: str) -> None:
        self.rps, self.burst, self.url = rps, max(1.0, rps), url
        self.local = InferenceLimiter(rps)
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> script

    def _script(self):
        """The script on a client of the running event loop (an asyncio client is bound to
        the loop it first ran on; tests run one loop per request)."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=1)
            script = self._scripts[loop] = client.register_script(_TAKE)
        return script

    async def take(self, tenant_id: str) -> float:
        import redis

        try:
            key = f"kilotask:infer-rate:{tenant_id}"
            return float(await self._script()(keys=[key], args=[self.rps, self.burst]))
        except (redis.RedisError, OSError):
            return self.local.take_now(tenant_id)


async def limit_inference(request: Request, settings: SettingsDep, tenant_id: TenantDep) -> None:
    rps = settings.tenant_infer_rps
    if not rps:
        return
    state = request.app.state
    limiter = getattr(state, "infer_limiter", None)
    if limiter is None or limiter.rps != rps:
        shared = settings.broker_url.startswith(("redis://", "rediss://"))
        limiter = state.infer_limiter = (
            SharedInferenceLimiter(rps, settings.broker_url) if shared else InferenceLimiter(rps)
        )
    wait = await limiter.take(tenant_id)
    if wait > 0:
        raise RateLimitedError(
            f"over this tenant's {rps:g} inference requests per second; retry in "
            f"{math.ceil(wait)} s, batch inputs into one /v1/infer call, or have the operator "
            "raise KILOTASK_TENANT_INFER_RPS",
            retry_after=wait,
        )


InferenceLimit = Annotated[None, Depends(limit_inference)]
