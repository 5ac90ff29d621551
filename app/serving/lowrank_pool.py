"""Resident lowrank tasks: each one's factors (λ·B per target and its head, 75 KB for
MiniLM-L6), rebuilt from θ_d in a few ms on a miss and kept in an LRU under their own memory
budget. All of them are served by one MixedLowRankModel per base model, so rows of any mix of
these tasks share one forward pass (app/engine/lowrank/mixed.py)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import BaseModel, position_limit
from app.engine.lowrank import LowRankFactors, MixedLowRankModel, config_of, output_rows
from app.engine.lowrank.seed_cache import SeedCache
from app.engine.reconstruct import settings_of
from app.errors import ConflictError
from app.serving.cache import TOKENIZE, TOKENIZER_LOCK, CacheStats

SEED_SHARE = 0.25  # of KILOTASK_SERVING_LOWRANK_CACHE_MB for tensors that depend on a seed only


@dataclass
class _Resident:
    factors: LowRankFactors
    pinned: bool = False


class LowRankPool:
    """Factors of lowrank tasks, keyed by content digest, under `budget_mb`.

    A rebuild is cheap (one projection of d numbers into rank·Σ out outputs), so two threads
    missing the same task at once may both build it; the second result is simply dropped.
    """

    def __init__(
        self, budget_mb: float, base_of, device: str = "cpu", dtype: str = "float32"
    ) -> None:
        self.budget_mb = budget_mb  # as configured, for messages
        self.dtype = dtype  # the factors at rest (KILOTASK_SERVING_LOWRANK_DTYPE)
        # seeds' A and seeded head weights take a share of the budget, the factors the rest
        self.seeds = SeedCache(int(budget_mb * 2**20 * SEED_SHARE))
        self.budget = int(budget_mb * 2**20) - self.seeds.max_bytes
        self.device = device
        self._base_of = base_of  # model id -> BaseModel (shared with the dense cache)
        self._servers: dict[str, MixedLowRankModel] = {}
        self.max_tokens: dict[str, int] = {}  # model id -> its position limit
        self._entries: OrderedDict[str, _Resident] = OrderedDict()
        self._bytes = 0
        self._pinned = [0, 0]  # pinned tasks, their bytes: running totals (100,000 tasks pin)
        self._lock = threading.Lock()
        self._server_lock = threading.Lock()
        self.stats = CacheStats()  # `recycled` stays 0: factors are small

    def server(self, model_id: str) -> MixedLowRankModel:
        with self._server_lock:
            if model_id not in self._servers:
                base: BaseModel = self._base_of(model_id)
                self.max_tokens[model_id] = position_limit(base.model, base.tokenizer)
                self._servers[model_id] = MixedLowRankModel(
                    base, self.device, self.seeds, getattr(torch, self.dtype)
                )
            return self._servers[model_id]

    def factors(self, task: TaskArtifact, pin: bool = False) -> LowRankFactors:
        """The task's resident factors, rebuilt from θ_d on a miss (refuses another base)."""
        with self._lock:
            resident = self._entries.get(task.digest)
            if resident is not None:
                self._entries.move_to_end(task.digest)
                self.stats.hits += 1
                if pin and not resident.pinned:
                    self._check_pin_room(resident.factors.nbytes)
                    self._set_pinned(resident, True)
                return resident.factors
            self.stats.misses += 1
        server = self.server(task.model)
        server.check_compatible(task.base_digest, task.D, task.space.size)
        start = time.perf_counter()
        config = config_of(settings_of(task))  # the same reading of the file as reconstruct
        built = server.build(config, task.space.size, task.theta, task.lam)
        self.stats.rebuild_seconds.add(time.perf_counter() - start)
        with self._lock:
            resident = self._entries.get(task.digest)
            if resident is None:
                if pin:
                    self._check_pin_room(built.nbytes)
                resident = self._entries[task.digest] = _Resident(built, False)
                self._bytes += built.nbytes
            if pin and not resident.pinned:
                self._set_pinned(resident, True)
            self._evict()
            return resident.factors

    def _set_pinned(self, resident: _Resident, pinned: bool) -> None:
        if resident.pinned != pinned:
            sign = 1 if pinned else -1
            self._pinned[0] += sign
            self._pinned[1] += sign * resident.factors.nbytes
            resident.pinned = pinned

    def _check_pin_room(self, nbytes: int) -> None:
        """Pins may fill the budget, not more (ConflictError, 409)."""
        count, pinned = self._pinned
        if pinned + nbytes > self.budget:
            raise ConflictError(
                "cannot pin: pinned lowrank tasks already fill their budget "
                f"(KILOTASK_SERVING_LOWRANK_CACHE_MB = {self.budget_mb:g} MB): "
                f"{count} pinned ({pinned / 2**20:.1f} MB), and this task needs "
                f"{nbytes / 1024:.1f} KB; unpin a task (DELETE /v1/tasks/{{id}}/pin) or raise "
                "KILOTASK_SERVING_LOWRANK_CACHE_MB",
                code="pin_budget_full",
            )

    def _evict(self) -> None:
        if self._bytes <= self.budget:
            return
        for digest in list(self._entries):
            if self._bytes <= self.budget or len(self._entries) <= 1:
                break
            if self._entries[digest].pinned:
                continue
            self._bytes -= self._entries.pop(digest).factors.nbytes
            self.stats.evictions += 1

    def unpin(self, digest: str) -> bool:
        with self._lock:
            resident = self._entries.get(digest)
            if resident is None:
                return False
            self._set_pinned(resident, False)
            self._evict()
            return True

    def contains(self, digest: str) -> bool:
        return digest in self._entries

    def describe(self) -> dict:
        with self._lock:
            n = len(self._entries)
            return {
                "budget_mb": self.budget_mb,
                "factors_budget_mb": self.budget / 2**20,
                "dtype": self.dtype,
                **self.seeds.describe(),
                "resident_tasks": n,
                "resident_mb": self._bytes / 2**20,
                "mean_task_kb": self._bytes / n / 1024 if n else 0.0,
                "pinned": self._pinned[0],
                "hits": self.stats.hits,
                "misses": self.stats.misses,
                "evictions": self.stats.evictions,
                "mean_rebuild_ms": 1e3 * self.stats.rebuild_seconds.mean,
            }


def classify_mixed(
    pool: LowRankPool, tasks: list[TaskArtifact], items: list[tuple[str, str | None]]
) -> list[torch.Tensor]:
    """Head outputs for items[i] under tasks[i] (all of one base model), in ONE forward pass.
    Rows are tokenized with their own task's max length, then padded together."""
    server = pool.server(tasks[0].model)
    factors = [pool.factors(t) for t in tasks]
    tokenizer = server.base.tokenizer
    limit = pool.max_tokens[tasks[0].model]  # never past the model's positions
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault((min(t.max_length, limit), bool(t.text_pair_column)), []).append(i)
    start = time.thread_time()
    with TOKENIZER_LOCK:  # a fast tokenizer is not safe to call from two threads at once
        if len(groups) == 1:  # the common case: one call pads too (tokenizer.pad is slow Python)
            [((max_length, paired), _)] = groups.items()
            batch = tokenizer(
                [text for text, _ in items],
                [pair or "" for _, pair in items] if paired else None,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        else:
            features: list[dict | None] = [None] * len(items)
            for (max_length, paired), idx in groups.items():
                enc = tokenizer(
                    [items[i][0] for i in idx],
                    [items[i][1] or "" for i in idx] if paired else None,
                    truncation=True,
                    max_length=max_length,
                )
                for k, i in enumerate(idx):
                    features[i] = {key: enc[key][k] for key in enc}
            batch = tokenizer.pad(features, padding=True, return_tensors="pt")
    TOKENIZE.add(time.thread_time() - start)
    encoded = {k: v.to(server.device) for k, v in batch.items()}
    logits = server.logits(factors, encoded)
    return [row.cpu() for row in output_rows(logits, [t.space.size for t in tasks])]
