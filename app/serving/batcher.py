"""Continuous micro-batching: requests queue per task; one consumer runs the model, and each
time it is free it takes every pending input of the task that has waited longest (up to
`max_batch`). Inputs that arrive while the model is busy therefore join the next batch, and a
lone request waits at most `max_wait_ms` for company. Model calls run one at a time on a
dedicated thread, off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.engine.artifact import TaskArtifact
from app.serving.cache import TaskCache, classify

Item = tuple[str, str | None]


@dataclass
class _Request:
    items: list[Item]
    future: asyncio.Future


@dataclass
class _Queue:
    task: TaskArtifact
    requests: list[_Request] = field(default_factory=list)


class MicroBatcher:
    def __init__(self, cache: TaskCache, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.cache, self.max_batch, self.max_wait = cache, max_batch, max_wait_ms / 1000
        self._queues: OrderedDict[str, _Queue] = OrderedDict()  # oldest waiting task first
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kilotask-infer")
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes: list[int] = []
        self.latencies: list[float] = []

    async def submit(self, task: TaskArtifact, items: list[Item]) -> torch.Tensor:
        """Probabilities (len(items), C) for `items`, computed in shared batches."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use on this event loop: start its consumer
            self._loop, self._wakeup = loop, asyncio.Event()
            self._queues.clear()
            loop.create_task(self._consume())
        futures = []
        for lo in range(0, len(items), self.max_batch):
            request = _Request(items[lo : lo + self.max_batch], loop.create_future())
            self._queues.setdefault(task.digest, _Queue(task)).requests.append(request)
            futures.append(request.future)
        self._wakeup.set()
        return torch.cat(await asyncio.gather(*futures))

    async def _consume(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self.max_wait)  # let a lone request gather company
            while self._queues:
                await self._run(self._take())

    def _take(self) -> tuple[TaskArtifact, list[_Request]]:
        """Up to max_batch inputs (whole requests) of the task that has waited longest."""
        digest, queue = next(iter(self._queues.items()))
        batch, size = [], 0
        while queue.requests and (
            not batch or size + len(queue.requests[0].items) <= self.max_batch
        ):
            request = queue.requests.pop(0)
            batch.append(request)
            size += len(request.items)
        if not queue.requests:
            del self._queues[digest]
        else:
            self._queues.move_to_end(digest)  # fairness: other tasks go next
        return queue.task, batch

    async def _run(self, work: tuple[TaskArtifact, list[_Request]]) -> None:
        task, batch = work
        items = [item for request in batch for item in request.items]
        texts = [t for t, _ in items]
        pairs = [p or "" for _, p in items] if task.text_pair_column else None
        start = time.perf_counter()
        try:
            probs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, task, texts, pairs
            )
        except Exception as exc:  # every request of this batch gets the same error
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        self.batch_sizes.append(len(items))
        self.latencies.append(time.perf_counter() - start)
        offset = 0
        for request in batch:
            n = len(request.items)
            if not request.future.done():
                request.future.set_result(probs[offset : offset + n])
            offset += n

    def _compute(self, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
        return classify(self.cache.get(task), task, texts, pairs)
