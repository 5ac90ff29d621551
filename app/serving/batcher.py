"""Continuous micro-batching: requests queue per task; model workers run the batches, and each
time a worker is free it takes every pending input of the task that has waited longest (up to
`max_batch`). Inputs that arrive while the workers are busy therefore join the next batch, and a
lone request waits at most `max_wait_ms` for company. Tasks of a mixable method (lowrank) share
one queue per base model instead: rows of any mix of those tasks go into one forward pass
(app/serving/lowrank_pool.py).

On CPU there is one worker per core, each with one intra-op thread: a small batch (the common
case when traffic is spread over many tasks) cannot use two cores inside one forward pass, but two
small batches of different tasks can run side by side. On GPU one worker owns the device.

Within a queue, requests are taken tenant by tenant, the tenant served longest ago first
(requests arrive split into pieces of at most `max_batch` inputs): one tenant's flood of
inputs delays another tenant's request by at most the batch already running, not by the flood.
Batches are length-aware: the first request picked (the fair one) sets the length, each tenant
then contributes its waiting request nearest to it in length (so a batch pads little), and a
batch stops at `max_batch` inputs or at `max_batch_tokens` padded tokens, whichever comes first
(lengths are estimated from characters before tokenizing, as a token is about four of them).

Admission: per base model, at most `max_queue` inputs wait (0: four batches per worker), and
at most `max_queue_ms` of work: the inputs waiting over the rate at which that model's inputs
were recently answered (those of the last DRAIN_WINDOW_S seconds), so the bound means the same
on a base five times slower. Past either, a request is refused at once (ServiceBusyError, 503 with
Retry-After: 1) rather than queued behind work the workers cannot finish in time, unless its
tenant has nothing waiting for that model: a tenant's flood fills the queue for itself only,
never refuses another tenant's first request (which fair picking then serves within a batch or
so).

One bad input never fails the others batched with it: when a batch of several inputs fails (for
a reason that is not the task's as a whole), each input is run again alone, and only the
requests whose own input fails get an error (InvalidInputError, 422, naming the problem)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.engine.artifact import TaskArtifact
from app.engine.errors import EngineError
from app.engine.methods import get_method
from app.errors import InvalidInputError, KilotaskError, ServiceBusyError
from app.serving.cache import TaskCache, classify
from app.serving.lowrank_pool import LowRankPool, classify_mixed
from app.serving.tally import Tally

Item = tuple[str, str | None]
QUEUED_BATCHES = 4  # default max_queue: this many full batches per worker
DRAIN_WINDOW_S = 2.0  # the admission's time bound reads the answer rate over this long
CHARS_PER_TOKEN = 4  # English text under WordPiece/BPE: about four characters a token
log = logging.getLogger("kilotask.serving")


def default_workers(device: str) -> int:
    return 1 if device != "cpu" else max(1, torch.get_num_threads())


@dataclass
class _Request:
    task: TaskArtifact
    items: list[Item]
    future: asyncio.Future
    tenant: str = ""
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        """Its longest input's estimated token count (what the batch pads each row to)."""
        longest = max(len(text) + len(pair or "") for text, pair in self.items)
        return min(self.task.max_length, 2 + longest // CHARS_PER_TOKEN)


@dataclass
class _Queue:
    task: TaskArtifact  # the queue's task (for a mixed queue: its first request's)
    mixed: bool = False  # requests of many tasks, run together by the lowrank pool
    requests: list[_Request] = field(default_factory=list)
    pending: int = 0  # inputs in `requests`


class MicroBatcher:
    def __init__(
        self,
        cache: TaskCache,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        workers: int | None = None,
        pool: LowRankPool | None = None,
        max_queue: int = 0,
        max_batch_tokens: int = 8192,
        max_queue_ms: float = 0.0,
    ) -> None:
        self.cache, self.max_batch, self.max_wait = cache, max_batch, max_wait_ms / 1000
        self.pool = pool
        self.max_delay = max(0.05, 10 * self.max_wait)  # longest a task is passed over
        self.workers = workers or default_workers(cache.device)
        self.max_queue = max_queue or QUEUED_BATCHES * max_batch * self.workers
        self.max_queue_s = max_queue_ms / 1000  # 0: no bound in time
        self._drained: dict[str, deque[tuple[float, int]]] = {}  # model -> (when, inputs done)
        self.max_batch_tokens = max_batch_tokens  # rows x the longest row's tokens, per batch
        self._waiting: dict[str, int] = {}  # base model -> inputs queued, not yet taken
        self._waiting_by: dict[tuple[str, str], int] = {}  # (base model, tenant) -> the same
        self.refused = 0  # requests refused because their model's queue was full
        threads_each = max(1, torch.get_num_threads() // self.workers)
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix="kilotask-infer",
            initializer=torch.set_num_threads,  # per-thread: the workers share the cores
            initargs=(threads_each,),
        )
        self._queues: OrderedDict[str, _Queue] = OrderedDict()  # oldest waiting task first
        self._served: dict[str, int] = {}  # tenant -> the turn it was last served on
        self._turn = 0
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes = Tally()  # inputs per model call
        self.latencies = Tally()  # seconds per model call (tokenizing included)
        self.queue_waits = Tally()  # seconds from a request's arrival to its batch's start
        self.model_cpu = Tally()  # CPU seconds of the model worker per call (tokenizing included)

    async def submit(self, task: TaskArtifact, items: list[Item], tenant: str = "") -> torch.Tensor:
        """Probabilities (len(items), C) for `items`, computed in shared batches; `tenant`
        gets its fair turn in each queue."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use on this event loop: start its consumer
            self._loop, self._wakeup = loop, asyncio.Event()
            self._queues.clear()
            self._waiting.clear()
            self._waiting_by.clear()
            loop.create_task(self._consume())
        self._admit(task.model, tenant, len(items))
        futures = []
        mixed = self.pool is not None and get_method(task.method).mixable
        key = f"mixed:{task.model}" if mixed else task.digest
        for lo in range(0, len(items), self.max_batch):
            request = _Request(task, items[lo : lo + self.max_batch], loop.create_future(), tenant)
            queue = self._queues.setdefault(key, _Queue(task, mixed))
            queue.requests.append(request)
            queue.pending += len(request.items)
            futures.append(request.future)
        self._wakeup.set()
        return torch.cat(await asyncio.gather(*futures))

    @property
    def waiting(self) -> dict[str, int]:
        """Inputs queued per base model, not yet in a batch."""
        return {model: n for model, n in self._waiting.items() if n}

    def _admit(self, model: str, tenant: str, n: int) -> None:
        """Count `n` more inputs of `tenant` waiting for `model`, or refuse them (503): past
        max_queue or max_queue_ms, when this tenant already has inputs waiting there."""
        refusal = self._refusal(model, tenant, n)
        if refusal is not None:
            self.refused += 1
            raise refusal
        self._waiting[model] = self._waiting.get(model, 0) + n
        self._waiting_by[model, tenant] = self._waiting_by.get((model, tenant), 0) + n

    def _refusal(self, model: str, tenant: str, n: int) -> ServiceBusyError | None:
        waiting = self._waiting.get(model, 0)
        own = self._waiting_by.get((model, tenant), 0)
        rate = self._drain_rate(model)
        wait_s = (waiting + n) / rate if rate else 0.0
        too_long = self.max_queue_s and wait_s > self.max_queue_s
        if not own or not (waiting + n > self.max_queue or too_long):
            return None
        bound = (
            f"about {1e3 * wait_s:.0f} ms of work, at most {1e3 * self.max_queue_s:.0f} "
            "(KILOTASK_SERVING_MAX_QUEUE_MS)"
            if too_long
            else f"at most {self.max_queue} in all (KILOTASK_SERVING_MAX_QUEUE)"
        )
        return ServiceBusyError(
            f"the server is at capacity for {model}: {waiting} inputs are waiting, {own} of "
            f"them yours ({bound}); retry in a second",
            code="serving_queue_full",
            retry_after=1,
        )

    def early_refusal(self, tenant: str) -> ServiceBusyError | None:
        """The refusal `tenant`'s next request would get on a model where its inputs already
        wait past the bound: asked before the request's body is read, so that under overload
        a refusal costs a key check, not a parse (app/api/guard.py)."""
        for model in list(self._waiting):
            if (model, tenant) in self._waiting_by:
                refusal = self._refusal(model, tenant, 1)
                if refusal is not None:
                    self.refused += 1
                    return refusal
        return None

    def _drain_rate(self, model: str) -> float:
        """Inputs of `model` answered per second over the last DRAIN_WINDOW_S (0: too few
        batches to tell, so no bound in time yet)."""
        done = self._drained.get(model)
        if not done or len(done) < 4:
            return 0.0
        now = time.perf_counter()
        if now - done[-1][0] > DRAIN_WINDOW_S:  # idle since: the queue drains at once
            return 0.0
        span = done[-1][0] - done[0][0]  # the first batch's inputs were answered at its start
        return (sum(n for _, n in done) - done[0][1]) / span if span > 0 else 0.0

    def _taken(self, model: str, batch: list[_Request]) -> None:
        for request in batch:
            n = len(request.items)
            self._waiting[model] -= n
            key = (model, request.tenant)
            self._waiting_by[key] -= n
            if not self._waiting_by[key]:
                del self._waiting_by[key]

    async def _consume(self) -> None:
        free = asyncio.Semaphore(self.workers)
        running: set[asyncio.Task] = set()  # strong references until each batch is done
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self.max_wait)  # let a lone request gather company
            while self._queues:
                await free.acquire()  # inputs arriving meanwhile join this batch
                try:
                    work = self._take()
                except Exception:  # a bug here must not leave every caller waiting forever
                    log.exception("the batcher could not form a batch; failing what waits")
                    self._fail_waiting()
                    free.release()
                    continue
                run = asyncio.get_running_loop().create_task(self._run(work))
                running.add(run)
                run.add_done_callback(lambda done: (running.discard(done), free.release()))

    def _fail_waiting(self) -> None:
        for queue in self._queues.values():
            for request in queue.requests:
                if not request.future.done():
                    request.future.set_exception(
                        ServiceBusyError("the server could not schedule this request; retry")
                    )
        self._queues.clear()
        self._waiting.clear()
        self._waiting_by.clear()

    def _take(self) -> tuple[_Queue, list[_Request]]:
        """Up to max_batch inputs (whole requests) of one task: the task with the most inputs
        pending, since on CPU every batch streams its task's whole weights once, unless the
        task that has waited longest has waited too long (no task starves)."""
        digest, queue = next(iter(self._queues.items()))
        if time.perf_counter() - queue.requests[0].arrived < self.max_delay:
            digest, queue = max(self._queues.items(), key=lambda kv: kv[1].pending)
        batch = self._fair_batch(queue)
        size = sum(len(request.items) for request in batch)
        queue.pending -= size
        self._taken(queue.task.model, batch)
        if not queue.requests:
            del self._queues[digest]
        else:
            self._queues.move_to_end(digest)  # fairness: other tasks go next
        return queue, batch

    def _fair_batch(self, queue: _Queue) -> list[_Request]:
        """Whole requests, at most max_batch inputs and max_batch_tokens padded tokens: one
        request per tenant in turn, the tenants served longest ago (or never) first; the first
        is the fair tenant's oldest request, and each later pick is that tenant's request
        nearest in length to the first (the first is always taken, whatever its size)."""
        by_tenant: dict[str, list[_Request]] = {}
        for request in queue.requests:
            by_tenant.setdefault(request.tenant, []).append(request)
        order = sorted(by_tenant, key=lambda t: self._served.get(t, -1))  # never served: first
        first = by_tenant[order[0]].pop(0)
        batch, rows, longest = [first], len(first.items), first.tokens
        taking = True
        while taking:
            taking = False
            for tenant in order:
                waiting = by_tenant[tenant]
                if not waiting:
                    continue
                at = min(range(len(waiting)), key=lambda i: abs(waiting[i].tokens - first.tokens))
                pick = waiting[at]
                size, padded = rows + len(pick.items), max(longest, pick.tokens)
                if size <= self.max_batch and size * padded <= self.max_batch_tokens:
                    del waiting[at]
                    batch.append(pick)
                    rows, longest = size, padded
                    taking = True
        chosen = {id(request) for request in batch}
        queue.requests = [r for r in queue.requests if id(r) not in chosen]
        self._turn += 1
        for request in batch:
            self._served[request.tenant] = self._turn  # last in line next time
        if len(self._served) > 100_000:  # bounded: forget the tenants idle longest
            cut = sorted(self._served.values())[len(self._served) // 2]
            self._served = {t: turn for t, turn in self._served.items() if turn >= cut}
        return batch

    async def _run(self, work: tuple[_Queue, list[_Request]]) -> None:
        queue, batch = work
        items = [item for request in batch for item in request.items]
        tasks = [request.task for request in batch for _ in request.items]
        start = time.perf_counter()
        for request in batch:
            self.queue_waits.add(start - request.arrived)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._score, queue.mixed, tasks, items
            )
        except Exception as exc:
            if len(items) > 1 and (queue.mixed or not _whole_task_error(exc)):
                # maybe one input's fault: run each alone, so only its own request fails
                results = await loop.run_in_executor(
                    self._executor, self._score_alone, queue.mixed, batch
                )
            else:  # the task's own problem (or one input): its requests share the error
                results = [_row_error(exc, items[0]) if len(items) == 1 else exc] * len(batch)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
            return
        elapsed = time.perf_counter() - start
        self.batch_sizes.add(len(items))
        self.latencies.add(elapsed)
        done = self._drained.setdefault(queue.task.model, deque())
        now = time.perf_counter()
        done.append((now, len(items)))
        while done and done[0][0] < now - DRAIN_WINDOW_S:
            done.popleft()
        offset = 0
        for request in batch:
            n = len(request.items)
            if not request.future.done():
                part = outputs[offset : offset + n]
                request.future.set_result(torch.stack(part) if queue.mixed else part)
            offset += n

    def _score(self, mixed: bool, tasks: list[TaskArtifact], items: list[Item]):
        """One model call: a (N, C) tensor, or for a mixed queue one (C_task,) row per input."""
        start = time.thread_time()
        try:
            if mixed:
                return classify_mixed(self.pool, tasks, items)
            task = tasks[0]  # a plain queue holds one task's inputs
            texts = [t for t, _ in items]
            pairs = [p or "" for _, p in items] if task.text_pair_column else None
            return self._compute(task, texts, pairs)
        finally:
            self.model_cpu.add(time.thread_time() - start)

    def _score_alone(
        self, mixed: bool, batch: list[_Request]
    ) -> list[torch.Tensor | BaseException]:
        """Each request's probabilities with every input run alone, or the error of its first
        input that fails alone."""
        results: list[torch.Tensor | BaseException] = []
        for request in batch:
            rows = []
            try:
                for item in request.items:
                    try:
                        out = self._score(mixed, [request.task], [item])
                    except Exception as exc:
                        raise _row_error(exc, item) from exc
                    rows.append(out[0])
            except Exception as exc:
                results.append(exc)
                continue
            results.append(torch.stack(rows))
        return results

    def _compute(self, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
        with self.cache.use(task) as entry:
            return classify(entry, task, texts, pairs)


def _whole_task_error(exc: Exception) -> bool:
    """Errors about the task or the service, not about one input: retrying inputs alone would
    only repeat them (and a busy cache would make each retry wait)."""
    return isinstance(exc, KilotaskError | EngineError | MemoryError | torch.OutOfMemoryError)


def _row_error(exc: Exception, item: Item) -> Exception:
    """What the request of an input that fails alone gets: service and engine errors as they
    are, anything else as a 422 that names the input and the failure."""
    if isinstance(exc, KilotaskError | EngineError):
        return exc
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return ServiceBusyError("out of memory while scoring this input; retry shortly")
    log.warning("an input failed alone in its batch", exc_info=exc)
    text = item[0] if len(item[0]) <= 40 else item[0][:40] + "…"
    return InvalidInputError(
        f"the model could not score the input {text!r}: {type(exc).__name__}: {exc}",
        code="input_failed",
    )
