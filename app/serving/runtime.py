"""The per-process serving runtime (cache + batcher), created on first use by the API."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.artifact import TaskArtifact
from app.engine.methods import get_method
from app.engine.projections import projection_cache_info
from app.serving.batcher import MicroBatcher
from app.serving.cache import MEMORY_WAIT_S, TaskCache
from app.serving.lowrank_pool import LowRankPool


@dataclass
class ServingRuntime:
    cache: TaskCache
    pool: LowRankPool
    batcher: MicroBatcher

    @classmethod
    def create(
        cls,
        budget_mb: float,
        max_batch: int,
        max_wait_ms: float,
        workers: int = 0,
        lowrank_budget_mb: float = 4096,
        memory_wait_s: float = MEMORY_WAIT_S,
    ) -> ServingRuntime:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cache = TaskCache(budget_mb, device, memory_wait_s)
        pool = LowRankPool(lowrank_budget_mb, cache.base_model, device)
        return cls(cache, pool, MicroBatcher(cache, max_batch, max_wait_ms, workers or None, pool))

    def pin(self, task: TaskArtifact) -> None:
        """Preload `task` and keep it resident (dense cache or lowrank pool, by its method).
        Raises ConflictError (409) when pinned tasks already fill that budget, and
        ServiceBusyError (503) when memory stays held by running batches."""
        if get_method(task.method).mixable:
            self.pool.factors(task, pin=True)
        else:
            self.cache.get(task, True)

    def unpin(self, task: TaskArtifact) -> bool:
        if get_method(task.method).mixable:
            return self.pool.unpin(task.digest)
        return self.cache.unpin(task.digest)

    def describe(self) -> dict:
        sizes = self.batcher.batch_sizes
        projections = projection_cache_info()
        return {
            "cache": self.cache.describe(),
            "lowrank": self.pool.describe(),
            "projection_cache": {  # process-wide G tables and projections (app/engine/fastfood)
                "mb": projections["bytes"] / 2**20,
                "limit_mb": projections["limit_bytes"] / 2**20,
                "g_tables": projections["g_tables"],
                "g_mb": projections["g_bytes"] / 2**20,
                "projections": projections["projections"],
            },
            "device": self.cache.device,
            "batches": sizes.count,
            "mean_batch_size": sizes.mean,
            "largest_batch": int(sizes.max),
            "max_batch": self.batcher.max_batch,
            "workers": self.batcher.workers,
            "max_wait_ms": self.batcher.max_wait * 1000,
        }
