"""Materialised tasks, rebuilt from their vectors on first use and kept under a memory budget.

The base is loaded from disk once per (model, number of labels) and kept as one flat θ_0. A task
owns one flat buffer of D floats: a rebuild copies θ_0 into it, seeds the task's head and adds
λ·P(θ_d) in place (never a projection per request). When the budget is full, the least recently
used unpinned task that no request is using gives its buffer to the newcomer, so a churning cache
allocates nothing. Entries are keyed by the task's content digest, so a changed task can never be
served from a stale entry.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from app.engine.artifact import TaskArtifact
from app.engine.base import BaseModel, load_base, seeded_init_
from app.engine.flat import FlatLayout, bind, flatten, layout_of, skeleton
from app.engine.reconstruct import add_task_delta_, check_compatible
from app.serving.tally import Tally

BaseKey = tuple[str, int]  # (model id, number of labels)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    recycled: int = 0
    rebuild_seconds: Tally = field(default_factory=Tally)


@dataclass
class _Base:
    loaded: BaseModel
    layout: FlatLayout
    theta0: torch.Tensor  # (D,) on the serving device
    skeleton: nn.Module  # parameters on the meta device


@dataclass
class Entry:
    model: nn.Module
    tokenizer: object
    flat: torch.Tensor  # the task's weights; the model's parameters are views of it
    base_key: BaseKey
    pinned: bool = False
    users: int = 0  # batches running on it now; a buffer in use is never recycled

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


class TaskCache:
    def __init__(self, budget_mb: float, device: str = "cpu") -> None:
        self.budget = int(budget_mb * 2**20)
        self.device = device
        self.stats = CacheStats()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bases: dict[BaseKey, _Base] = {}
        self._lock = threading.RLock()
        self._base_lock = threading.Lock()
        self._building: dict[str, Future] = {}  # digest -> the build in progress

    def _base(self, key: BaseKey) -> _Base:
        with self._base_lock:  # not the entry lock: resident tasks keep serving meanwhile
            if key not in self._bases:
                loaded = load_base(key[0], num_labels=key[1], seed=0)
                layout = layout_of(loaded.model)
                theta0 = flatten(loaded.model, layout, self.device)
                self._bases[key] = _Base(loaded, layout, theta0, skeleton(loaded.model))
            return self._bases[key]

    def base_model(self, model_id: str, num_labels: int = 2) -> BaseModel:
        """The loaded base (pristine weights) for `model_id`, shared with the lowrank pool."""
        return self._base((model_id, num_labels)).loaded

    def _build(self, task: TaskArtifact, key: BaseKey) -> Entry:
        base = self._base(key)
        check_compatible(base.loaded, task)  # before any work: never mix digests
        spare = self._make_room(base.theta0.numel() * base.theta0.element_size(), key)
        if spare is None:
            flat = torch.empty_like(base.theta0)
            model = bind(base.skeleton, base.layout, flat)
        else:
            flat, model = spare.flat, spare.model
            self.stats.recycled += 1
        flat.copy_(base.theta0)
        seeded_init_(model, base.loaded.seeded, task.seed)  # the task's own head, in place
        add_task_delta_(flat, task, base.layout.sizes)
        return Entry(model, base.loaded.tokenizer, flat, key)

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
            entry = self._build(task, (task.model, len(task.labels)))
            with self._lock:
                entry.pinned, entry.users = pin, int(hold)
                self.stats.rebuild_seconds.add(time.perf_counter() - start)
                self._entries[task.digest] = entry
                self._make_room(0, None)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._building[task.digest]
        pending.set_result(entry)
        return entry

    def release(self, entry: Entry) -> None:
        with self._lock:
            entry.users -= 1

    @contextmanager
    def use(self, task: TaskArtifact) -> Iterator[Entry]:
        """The task's model, held so its buffer is not recycled while a batch runs on it."""
        entry = self.get(task, hold=True)
        try:
            yield entry
        finally:
            self.release(entry)

    def _make_room(self, nbytes: int, key: BaseKey | None) -> Entry | None:
        """Evict least recently used unpinned tasks until `nbytes` more fit in the budget.
        Returns an evicted entry of base `key` that nobody is using, for its buffer, if any."""
        spare = None
        with self._lock:
            for digest in list(self._entries):
                if self.resident_bytes + nbytes <= self.budget:
                    break
                entry = self._entries[digest]
                if entry.pinned or (nbytes == 0 and len(self._entries) == 1):
                    continue
                del self._entries[digest]
                self.stats.evictions += 1
                if spare is None and entry.base_key == key and entry.users == 0:
                    spare = entry
        return spare

    @property
    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def describe(self) -> dict:
        with self._lock:
            return {
                "budget_mb": self.budget / 2**20,
                "resident_mb": self.resident_bytes / 2**20,
                "resident_tasks": [
                    {"digest": d, "mb": e.nbytes / 2**20, "pinned": e.pinned}
                    for d, e in self._entries.items()
                ],
                "hits": self.stats.hits,
                "misses": self.stats.misses,
                "evictions": self.stats.evictions,
                "recycled_buffers": self.stats.recycled,
                "mean_rebuild_ms": 1e3 * self.stats.rebuild_seconds.mean,
                "bases": [f"{m}:{k}" for m, k in self._bases],
            }

    def contains(self, digest: str) -> bool:
        return digest in self._entries

    def unpin(self, digest: str) -> bool:
        """Let the task be evicted again; returns whether it was resident."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            entry.pinned = False
            self._make_room(0, None)
            return True


TOKENIZER_LOCK = threading.Lock()


@torch.inference_mode()
def classify(entry: Entry, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
    """Probabilities (N, C) for a group of inputs to one task, one padded batch."""
    with TOKENIZER_LOCK:  # a fast tokenizer is not safe to call from two threads at once
        enc = entry.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=task.max_length,
            padding=True,
            return_tensors="pt",
        )
    enc = {k: v.to(entry.flat.device) for k, v in enc.items()}
    return torch.softmax(entry.model(**enc).logits.float(), -1).cpu()
