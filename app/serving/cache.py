"""Materialised tasks, rebuilt from their vectors on first use and kept under a memory budget.

The base is loaded from disk once per model, whatever the label counts of its tasks, and kept as
one flat θ_0; the loaded module's parameters are views of it (one copy of the base's weights). A
task owns one flat buffer of D floats (D counts its own head): a rebuild copies the body's
weights from θ_0 into it, seeds the task's head and adds λ·P(θ_d) in place (never a projection
per request). Another label count costs a layout and a meta-device skeleton, not a copy.
When the budget is full, the least recently used unpinned task that no request is using gives
its buffer to the newcomer, so a churning cache allocates nothing. Entries are keyed by the
task's content digest, so a changed task can never be served from a stale entry.

The budget counts every task buffer alive: resident tasks (in use or not) and buffers being
built. A task in use by a batch is never evicted, so no evicted buffer outlives its entry. A
build that finds no room waits (up to `wait_s`) for a batch to finish, then fails with a
ServiceBusyError (503) rather than exceed the budget. Pinned tasks may fill the budget but not
more: a pin beyond it is a ConflictError (409).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from app.engine.artifact import TaskArtifact
from app.engine.base import NO_POSITION_LIMIT, BaseModel, load_base, position_limit, seeded_init_
from app.engine.flat import (
    FlatLayout,
    bind,
    flatten,
    layout_of,
    relabelled_skeleton,
    share_,
    skeleton,
)
from app.engine.reconstruct import add_task_delta_, check_compatible
from app.errors import ConflictError, ServiceBusyError
from app.serving.tally import Tally

BaseKey = tuple[str, int]  # (model id, number of head outputs)
MEMORY_WAIT_S = 10.0  # how long a build waits for a running batch to free memory, by default
BUDGET_SETTING = "KILOTASK_SERVING_CACHE_MB"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    recycled: int = 0
    waits: int = 0  # builds that had to wait for memory
    refused: int = 0  # builds refused (503) for want of memory
    rebuild_seconds: Tally = field(default_factory=Tally)


@dataclass
class _Base:
    """One model's pretrained weights, loaded once."""

    loaded: BaseModel
    layout: FlatLayout
    theta0: torch.Tensor  # (D,) on the serving device; loaded.model's parameters are views of it
    max_tokens: int  # position_limit of the model: no input is tokenized longer

    @property
    def nbytes(self) -> int:
        return self.theta0.numel() * self.theta0.element_size()


@dataclass
class _Shape:
    """How a task buffer of one label count is laid out, and filled from its model's θ_0."""

    base: _Base
    layout: FlatLayout  # D counts this label count's head
    skeleton: nn.Module  # parameters on the meta device
    copies: list[tuple[int, int, int]]  # (offset in the buffer, offset in θ_0, length)

    def fill_(self, flat: torch.Tensor) -> None:
        """The base's weights into `flat`, all but the seeded ones (the task seeds those)."""
        for dst, src, n in self.copies:
            flat[dst : dst + n].copy_(self.base.theta0[src : src + n])


def _copy_runs(base: _Base, layout: FlatLayout) -> list[tuple[int, int, int]]:
    """Contiguous runs of `layout`'s non-seeded weights and where θ_0 holds each (the names
    sort alike, so a few runs cover the body)."""
    where, at = {}, 0
    for name, size in zip(base.layout.names, base.layout.sizes, strict=True):
        where[name] = at
        at += size
    runs: list[list[int]] = []
    dst = 0
    for name, size in zip(layout.names, layout.sizes, strict=True):
        if name not in base.loaded.seeded:
            src = where[name]
            if runs and runs[-1][0] + runs[-1][2] == dst and runs[-1][1] + runs[-1][2] == src:
                runs[-1][2] += size
            else:
                runs.append([dst, src, size])
        dst += size
    return [(a, b, n) for a, b, n in runs]


@dataclass
class Entry:
    model: nn.Module
    tokenizer: object
    flat: torch.Tensor  # the task's weights; the model's parameters are views of it
    base_key: BaseKey
    pinned: bool = False
    users: int = 0  # batches running on it now; an entry in use is never evicted
    max_tokens: int = NO_POSITION_LIMIT  # the base model's position limit

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


class TaskCache:
    def __init__(
        self,
        budget_mb: float,
        device: str = "cpu",
        wait_s: float = MEMORY_WAIT_S,
        pin_fraction: float = 1.0,
    ) -> None:
        self.budget_mb = budget_mb  # as configured, for messages
        self.budget = int(budget_mb * 2**20)
        self.pin_budget = int(self.budget * pin_fraction)  # all pins together, at most
        self.device = device
        self.wait_s = wait_s
        self.stats = CacheStats()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bases: dict[str, _Base] = {}  # model id -> its weights, one copy per model
        self._shapes: dict[BaseKey, _Shape] = {}
        self._separate: dict[BaseKey, _Base] = {}  # bases with a head of their own, see _shape
        self._lock = threading.RLock()
        self._memory = threading.Condition(self._lock)  # notified whenever memory may be free
        self._base_lock = threading.Lock()
        self._building: dict[str, Future] = {}  # digest -> the build in progress
        self._resident = 0  # bytes of the entries' buffers
        self._reserved = 0  # bytes of buffers being built (allocated or about to be)
        self._reserved_pinned = 0  # the part of _reserved that pins are building
        self._buffers_lock = threading.Lock()
        self.buffers_live = 0  # task buffers allocated and not yet freed (measured, not counted)
        self.buffers_peak = 0

    def _load(self, model_id: str, num_labels: int) -> _Base:
        loaded = load_base(model_id, num_labels=num_labels, seed=0)
        layout = layout_of(loaded.model)
        theta0 = flatten(loaded.model, layout, self.device)
        share_(loaded.model, layout, theta0)  # one copy: the module reads θ_0 itself
        return _Base(loaded, layout, theta0, position_limit(loaded.model, loaded.tokenizer))

    def _base(self, model_id: str, num_labels: int = 2) -> _Base:
        """The model's weights, loaded on first use (with a head of `num_labels` outputs)."""
        with self._base_lock:  # not the entry lock: resident tasks keep serving meanwhile
            if model_id not in self._bases:
                self._bases[model_id] = self._load(model_id, num_labels)
            return self._bases[model_id]

    def _shape(self, key: BaseKey) -> _Shape:
        """The layout of tasks with `key`'s label count, on the model's one copy of weights. A
        checkpoint that holds a head of its own (rare: its shape decides what loads) gets a
        base per label count, as `load_base` would give."""
        base = self._base(*key)
        with self._base_lock:
            if key not in self._shapes:
                skel = relabelled_skeleton(base.loaded, key[1])
                if skel is None:
                    base = self._separate.setdefault(key, self._load(*key))
                    skel = skeleton(base.loaded.model)
                layout = layout_of(skel)
                self._shapes[key] = _Shape(base, layout, skel, _copy_runs(base, layout))
            return self._shapes[key]

    def base_model(self, model_id: str) -> BaseModel:
        """The loaded base (pristine weights) for `model_id`, shared with the lowrank pool."""
        return self._base(model_id).loaded

    def _new_buffer(self, D: int) -> torch.Tensor:
        """A task buffer, counted as live until it is freed (measured by a finalizer, so the
        count is the memory actually held, whatever holds it)."""
        flat = torch.empty(D, device=self.device)
        with self._buffers_lock:
            self.buffers_live += 1
            self.buffers_peak = max(self.buffers_peak, self.buffers_live)
        weakref.finalize(flat, self._buffer_freed)
        return flat

    def _buffer_freed(self) -> None:
        with self._buffers_lock:
            self.buffers_live -= 1

    def _build(self, task: TaskArtifact, key: BaseKey, pin: bool) -> Entry:
        """The task's entry, in a buffer reserved under the budget (see `_reserve`); the caller
        moves the reservation to the resident bytes when it stores the entry."""
        shape = self._shape(key)
        base, nbytes = shape.base, shape.layout.D * shape.base.theta0.element_size()
        check_compatible(base.loaded, task, shape.layout.D)  # before any work: never mix digests
        spare = self._reserve(nbytes, key, pin)
        try:
            if spare is None:
                flat = self._new_buffer(shape.layout.D)
                model = bind(shape.skeleton, shape.layout, flat)
            else:
                flat, model = spare.flat, spare.model  # the evicted task's buffer
                self.stats.recycled += 1
            shape.fill_(flat)
            seeded_init_(model, base.loaded.seeded, task.seed)  # the task's own head, in place
            add_task_delta_(flat, task, shape.layout)
        except BaseException:
            with self._memory:
                self._unreserve(nbytes, pin)
            raise
        return Entry(model, base.loaded.tokenizer, flat, key, max_tokens=base.max_tokens)

    def _unreserve(self, nbytes: int, pin: bool) -> None:
        self._reserved -= nbytes
        self._reserved_pinned -= nbytes if pin else 0
        self._memory.notify_all()

    def _reserve(self, nbytes: int, key: BaseKey, pin: bool) -> Entry | None:
        """Reserve `nbytes` for a buffer under the budget, evicting idle unpinned tasks (least
        recently used first). Returns an evicted entry of base `key` whose buffer the new task
        takes over, if any. Waits up to `wait_s` for running batches to release tasks; raises
        ConflictError for a pin beyond the budget and ServiceBusyError when memory stays full."""
        deadline = time.monotonic() + self.wait_s
        waited = False
        with self._memory:
            while True:
                pinned_n, pinned_bytes = self._pinned()
                if pin:
                    self._check_pin_room(nbytes)
                if pinned_bytes + nbytes > self.budget:
                    self.stats.refused += 1
                    too_big = nbytes > self.budget
                    raise ServiceBusyError(
                        f"one task of {key[0]} needs {nbytes / 2**20:.1f} MB, more than the whole "
                        f"serving budget ({BUDGET_SETTING} = {self.budget_mb:g} MB); raise it"
                        if too_big
                        else f"no room to serve this task: {pinned_n} pinned tasks "
                        f"({pinned_bytes / 2**20:.1f} MB) fill the serving budget "
                        f"({BUDGET_SETTING} = {self.budget_mb:g} MB); unpin some or raise "
                        f"{BUDGET_SETTING}",
                        code="serving_budget_too_small" if too_big else "serving_budget_pinned",
                    )
                fits, spare = self._evict_for(nbytes, key)
                if fits:
                    self._reserved += nbytes
                    self._reserved_pinned += nbytes if pin else 0
                    return spare
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stats.refused += 1
                    raise ServiceBusyError(
                        f"no serving memory for this task within {self.wait_s:g} s: the budget "
                        f"({BUDGET_SETTING} = {self.budget_mb:g} MB) is held by tasks that "
                        "running batches are using and by tasks being built; retry shortly",
                        code="serving_memory_busy",
                    )
                if not waited:
                    self.stats.waits += 1
                    waited = True
                self._memory.wait(remaining)

    def _evict_for(self, nbytes: int, key: BaseKey) -> tuple[bool, Entry | None]:
        """Evict idle unpinned entries, least recently used first, until `nbytes` fit. The first
        evicted entry of base `key` ends the search: its buffer is handed over (returned)."""
        free = self.budget - self._resident - self._reserved
        for digest, entry in list(self._entries.items()):
            if free >= nbytes:
                break
            if entry.pinned or entry.users:
                continue
            del self._entries[digest]
            self._resident -= entry.nbytes
            self.stats.evictions += 1
            if entry.base_key == key and entry.nbytes == nbytes:
                return True, entry
            free += entry.nbytes
        return free >= nbytes, None

    def _check_pin_room(self, nbytes: int) -> None:
        """All pins together may take `pin_budget` (ConflictError, 409): the rest of the budget
        stays for tasks that nobody pinned."""
        pinned_n, pinned_bytes = self._pinned()
        if pinned_bytes + nbytes > self.pin_budget:
            raise ConflictError(
                f"cannot pin: pinned tasks already fill the {self.pin_budget / 2**20:.1f} MB of "
                f"the serving budget that pins may take ({BUDGET_SETTING} = "
                f"{self.budget_mb:g} MB): {pinned_n} pinned ({pinned_bytes / 2**20:.1f} MB), "
                f"and this task needs {nbytes / 2**20:.1f} MB; unpin a task "
                f"(DELETE /v1/tasks/{{id}}/pin) or raise {BUDGET_SETTING}",
                code="pin_budget_full",
            )

    def _pinned(self) -> tuple[int, int]:
        """(pinned tasks, their bytes), counting pins being built."""
        pinned = [e.nbytes for e in self._entries.values() if e.pinned]
        return len(pinned), sum(pinned) + self._reserved_pinned

    def get(self, task: TaskArtifact, pin: bool = False, hold: bool = False) -> Entry:
        """The ready model for `task`, building it on a miss (refuses another base digest).
        `hold` counts the caller as a user until `release` (see `use`).

        A build runs outside the lock, so other workers keep serving resident tasks meanwhile;
        callers that want a task already being built wait for that build instead of repeating it.
        """
        while True:
            with self._lock:
                entry = self._entries.get(task.digest)
                if entry is not None:
                    self._entries.move_to_end(task.digest)
                    self.stats.hits += 1
                    if pin and not entry.pinned:
                        self._check_pin_room(entry.nbytes)
                    entry.pinned = entry.pinned or pin
                    entry.users += hold
                    return entry
                pending = self._building.get(task.digest)
                if pending is None:
                    self.stats.misses += 1
                    pending = self._building[task.digest] = Future()
                    break
            pending.result()  # someone else's build: then take it from the cache as a hit
        try:
            start = time.perf_counter()
            entry = self._build(task, (task.model, task.space.size), pin)
            with self._memory:  # the reservation becomes resident bytes, atomically
                entry.pinned, entry.users = pin, int(hold)
                self.stats.rebuild_seconds.add(time.perf_counter() - start)
                self._entries[task.digest] = entry
                self._resident += entry.nbytes
                self._unreserve(entry.nbytes, pin)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._building[task.digest]
        pending.set_result(entry)
        return entry

    def release(self, entry: Entry) -> None:
        with self._memory:
            entry.users -= 1
            if entry.users == 0:
                self._memory.notify_all()  # a waiting build may evict it now

    @contextmanager
    def use(self, task: TaskArtifact) -> Iterator[Entry]:
        """The task's model, held so its buffer is not recycled while a batch runs on it."""
        entry = self.get(task, hold=True)
        try:
            yield entry
        finally:
            self.release(entry)

    @property
    def resident_bytes(self) -> int:
        return self._resident

    @property
    def live_bytes(self) -> int:
        """Bytes of task buffers the budget counts: resident plus being built."""
        return self._resident + self._reserved

    def describe(self) -> dict:
        with self._lock:
            return {
                "budget_mb": self.budget / 2**20,
                "resident_mb": self.resident_bytes / 2**20,
                "building_mb": self._reserved / 2**20,
                "live_mb": self.live_bytes / 2**20,
                "pinned_tasks": self._pinned()[0],
                "pinned_mb": self._pinned()[1] / 2**20,
                "resident_tasks": [
                    {"digest": d, "mb": e.nbytes / 2**20, "pinned": e.pinned}
                    for d, e in self._entries.items()
                ],
                "hits": self.stats.hits,
                "misses": self.stats.misses,
                "evictions": self.stats.evictions,
                "recycled_buffers": self.stats.recycled,
                "memory_waits": self.stats.waits,
                "memory_refusals": self.stats.refused,
                "memory_wait_s": self.wait_s,
                "buffers_live": self.buffers_live,
                "buffers_peak": self.buffers_peak,
                "mean_rebuild_ms": 1e3 * self.stats.rebuild_seconds.mean,
                "bases": sorted(self._bases) + [f"{m}:{k}" for m, k in self._separate],
                "label_counts": sorted(f"{m}:{k}" for m, k in self._shapes),
                "bases_mb": sum(b.nbytes for b in self._all_bases()) / 2**20,
            }

    def _all_bases(self) -> list[_Base]:
        return list(self._bases.values()) + list(self._separate.values())

    def contains(self, digest: str) -> bool:
        return digest in self._entries

    def unpin(self, digest: str) -> bool:
        """Let the task be evicted again; returns whether it was resident."""
        with self._memory:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            entry.pinned = False
            self._memory.notify_all()  # a waiting build may evict it now
            return True


TOKENIZER_LOCK = threading.Lock()
TOKENIZE = Tally()  # CPU seconds per tokenizer call in the model workers


@torch.inference_mode()
def classify(entry: Entry, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
    """Head outputs (N, C) in float32 for a group of inputs to one task, one padded batch (the
    task's OutputSpace turns them into what users see)."""
    start = time.thread_time()
    with TOKENIZER_LOCK:  # a fast tokenizer is not safe to call from two threads at once
        enc = entry.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=min(task.max_length, entry.max_tokens),  # never past the positions
            padding=True,
            return_tensors="pt",
        )
    TOKENIZE.add(time.thread_time() - start)
    enc = {k: v.to(entry.flat.device) for k, v in enc.items()}
    return entry.model(**enc).logits.float().cpu()
