"""The per-process serving runtime (cache + batcher), created on first use by the API."""

from __future__ import annotations

from dataclasses import dataclass

from app.serving.batcher import MicroBatcher
from app.serving.cache import TaskCache


@dataclass
class ServingRuntime:
    cache: TaskCache
    batcher: MicroBatcher

    @classmethod
    def create(
        cls, budget_mb: float, max_batch: int, max_wait_ms: float, workers: int = 0
    ) -> ServingRuntime:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cache = TaskCache(budget_mb, device)
        return cls(cache, MicroBatcher(cache, max_batch, max_wait_ms, workers or None))

    def describe(self) -> dict:
        sizes = self.batcher.batch_sizes
        return {
            "cache": self.cache.describe(),
            "device": self.cache.device,
            "batches": sizes.count,
            "mean_batch_size": sizes.mean,
            "largest_batch": int(sizes.max),
            "max_batch": self.batcher.max_batch,
            "workers": self.batcher.workers,
            "max_wait_ms": self.batcher.max_wait * 1000,
        }
