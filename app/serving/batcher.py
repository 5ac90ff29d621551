"""Dynamic micro-batching: inputs for the same task that arrive within `max_wait_ms` of each
other run as one batch (up to `max_batch`), so many small clients still fill batches. Model
calls run one at a time on a dedicated thread, off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.engine.artifact import TaskArtifact
from app.serving.cache import TaskCache, classify

Item = tuple[str, str | None]


@dataclass
class _Pending:
    task: TaskArtifact
    items: list[Item] = field(default_factory=list)
    waiters: list[tuple[int, int, asyncio.Future]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    def __init__(self, cache: TaskCache, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.cache, self.max_batch, self.max_wait = cache, max_batch, max_wait_ms / 1000
        self._pending: dict[str, _Pending] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kilotask-infer")
        self.batch_sizes: list[int] = []
        self.latencies: list[float] = []

    async def submit(self, task: TaskArtifact, items: list[Item]) -> torch.Tensor:
        """Probabilities (len(items), C) for `items`, computed in shared batches."""
        loop = asyncio.get_running_loop()
        results = []
        for lo in range(0, len(items), self.max_batch):
            chunk = items[lo : lo + self.max_batch]
            pending = self._pending.setdefault(task.digest, _Pending(task))
            future = loop.create_future()
            pending.waiters.append((len(pending.items), len(chunk), future))
            pending.items.extend(chunk)
            if len(pending.items) >= self.max_batch:
                self._flush(task.digest)
            elif pending.timer is None:
                pending.timer = loop.call_later(self.max_wait, self._flush, task.digest)
            results.append(future)
        return torch.cat(await asyncio.gather(*results))

    def _flush(self, digest: str) -> None:
        pending = self._pending.pop(digest, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        asyncio.get_running_loop().create_task(self._run(pending))

    async def _run(self, pending: _Pending) -> None:
        texts = [t for t, _ in pending.items]
        pairs = [p or "" for _, p in pending.items] if pending.task.text_pair_column else None
        start = time.perf_counter()
        try:
            probs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, pending.task, texts, pairs
            )
        except Exception as exc:  # every waiter of this batch gets the same error
            for _, _, future in pending.waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batch_sizes.append(len(texts))
        self.latencies.append(time.perf_counter() - start)
        for offset, size, future in pending.waiters:
            if not future.done():
                future.set_result(probs[offset : offset + size])

    def _compute(self, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
        return classify(self.cache.get(task), task, texts, pairs)
