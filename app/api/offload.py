"""Heavy request work off the event loop, in a bounded pool (issue 23).

Parsing an upload, validating a task file, loading a model's facts and the database work
around them are synchronous; run on the event loop they froze every other request (a 50,000
column CSV held `/healthz` for 12.8 s). `offload` runs them in worker threads, at most
HEAVY_THREADS at once and at most PER_TENANT of those for one tenant, so one tenant's heavy
requests can neither block the loop nor take every thread: light routes (plain `def`) keep
Starlette's own pool to themselves.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
HEAVY_THREADS = 4
PER_TENANT = 2


class _Limiters:
    """The limiters of one event loop (anyio's are bound to the loop that first waits)."""

    def __init__(self) -> None:
        self.heavy = anyio.CapacityLimiter(HEAVY_THREADS)
        self.tenants: weakref.WeakValueDictionary[str, anyio.CapacityLimiter] = (
            weakref.WeakValueDictionary()
        )

    def tenant(self, tenant_id: str) -> anyio.CapacityLimiter:
        limiter = self.tenants.get(tenant_id)
        if limiter is None:
            limiter = self.tenants[tenant_id] = anyio.CapacityLimiter(PER_TENANT)
        return limiter


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Limiters] = (
    weakref.WeakKeyDictionary()
)


def _limiters() -> _Limiters:
    loop = asyncio.get_running_loop()
    limiters = _BY_LOOP.get(loop)
    if limiters is None:
        limiters = _BY_LOOP[loop] = _Limiters()
    return limiters


async def offload(tenant_id: str | None, fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` in the heavy pool, under the tenant's share of it."""
    limiters = _limiters()
    call = partial(fn, *args, **kwargs)
    if tenant_id is None:
        return await anyio.to_thread.run_sync(call, limiter=limiters.heavy)
    tenant = limiters.tenant(tenant_id)  # held by this frame while it waits
    async with tenant:
        return await anyio.to_thread.run_sync(call, limiter=limiters.heavy)
