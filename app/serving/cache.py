"""Materialised tasks, rebuilt from their vectors on first use and kept under a memory budget.

The base is loaded from disk once per (model, number of labels); a task costs a copy of it plus
one projection (θ_0 + λ·P(θ_d)), never a projection per request. Entries are keyed by the task's
content digest, so a changed task can never be served from a stale entry.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from app.engine.artifact import TaskArtifact
from app.engine.base import BaseModel, load_base, seeded_init_
from app.engine.reconstruct import reconstruct


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rebuild_seconds: list[float] = field(default_factory=list)


@dataclass
class Entry:
    model: nn.Module
    tokenizer: object
    nbytes: int
    pinned: bool = False


class TaskCache:
    def __init__(self, budget_mb: float, device: str = "cpu") -> None:
        self.budget = int(budget_mb * 2**20)
        self.device = device
        self.stats = CacheStats()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bases: dict[tuple[str, int], BaseModel] = {}
        self._lock = threading.RLock()

    def _base(self, model_id: str, num_labels: int) -> BaseModel:
        key = (model_id, num_labels)
        if key not in self._bases:
            self._bases[key] = load_base(model_id, num_labels=num_labels, seed=0)
        return self._bases[key]

    def _build(self, task: TaskArtifact) -> Entry:
        template = self._base(task.model, len(task.labels))
        base = copy.copy(template)
        base.model = copy.deepcopy(template.model)
        seeded_init_(base.model, base.seeded, task.seed)  # the task's own seeded head
        model = reconstruct(base, task, self.device)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return Entry(model, template.tokenizer, nbytes)

    def get(self, task: TaskArtifact, pin: bool = False) -> Entry:
        """The ready model for `task`, building it on a miss (refuses another base digest)."""
        with self._lock:
            entry = self._entries.get(task.digest)
            if entry is not None:
                self._entries.move_to_end(task.digest)
                self.stats.hits += 1
                entry.pinned = entry.pinned or pin
                return entry
            self.stats.misses += 1
            start = time.perf_counter()
            entry = self._build(task)
            entry.pinned = pin
            self.stats.rebuild_seconds.append(time.perf_counter() - start)
            self._entries[task.digest] = entry
            self._evict()
            return entry

    def _evict(self) -> None:
        for digest in list(self._entries):
            if self.resident_bytes <= self.budget:
                return
            entry = self._entries[digest]
            if not entry.pinned and len(self._entries) > 1:
                del self._entries[digest]
                self.stats.evictions += 1

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
                "mean_rebuild_ms": 1e3
                * sum(self.stats.rebuild_seconds)
                / max(1, len(self.stats.rebuild_seconds)),
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
            self._evict()
            return True


@torch.no_grad()
def classify(entry: Entry, task: TaskArtifact, texts: list[str], pairs: list[str] | None):
    """Probabilities (N, C) for a group of inputs to one task, one padded batch."""
    enc = entry.tokenizer(
        texts, pairs, truncation=True, max_length=task.max_length, padding=True, return_tensors="pt"
    )
    enc = {k: v.to(next(entry.model.parameters()).device) for k, v in enc.items()}
    return torch.softmax(entry.model(**enc).logits.float(), -1).cpu()
