"""The per-process serving runtime (cache + batcher), created on first use by the API."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.artifact import TaskArtifact
from app.engine.methods import get_method
from app.engine.projections import projection_cache_info
from app.serving.batcher import MicroBatcher
from app.serving.cache import MEMORY_WAIT_S, TOKENIZE, TaskCache
from app.serving.lowrank_pool import LowRankPool
from app.serving.pins import PinLedger

PIN_SHARE = 0.25


@dataclass
class ServingRuntime:
    cache: TaskCache
    pool: LowRankPool
    batcher: MicroBatcher
    pins: PinLedger = field(default_factory=lambda: PinLedger(PIN_SHARE))

    @classmethod
    def create(
        cls,
        budget_mb: float,
        max_batch: int,
        max_wait_ms: float,
        workers: int = 0,
        lowrank_budget_mb: float = 4096,
        memory_wait_s: float = MEMORY_WAIT_S,
        pin_share: float = PIN_SHARE,
        max_queue: int = 0,
        max_batch_tokens: int = 8192,
        max_queue_ms: float = 0.0,
        lowrank_dtype: str = "float32",
    ) -> ServingRuntime:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cache = TaskCache(budget_mb, device, memory_wait_s, pin_fraction=1 - pin_share)
        pool = LowRankPool(lowrank_budget_mb, cache.base_model, device, lowrank_dtype)
        batcher = MicroBatcher(
            cache, max_batch, max_wait_ms, workers or None, pool, max_queue, max_batch_tokens,
            max_queue_ms,
        )  # fmt: skip
        return cls(cache, pool, batcher, PinLedger(pin_share))

    def pin(self, task: TaskArtifact, tenant: str) -> None:
        """Preload `task` and keep it resident (dense cache or lowrank pool, by its method) for
        `tenant`. Raises ConflictError (409) past the tenant's share of that budget or when
        pins fill it, and ServiceBusyError (503) when memory stays held by running batches."""
        lowrank = get_method(task.method).mixable
        store = self.pool if lowrank else self.cache
        already = self.pins.holds(tenant, task.digest)
        nbytes = (
            self.pool.factors(task, pin=True).nbytes
            if lowrank
            else self.cache.get(task, True).nbytes
        )
        try:
            self.pins.add(tenant, task.digest, nbytes, store.budget, store.budget_mb)
        except Exception:
            if not already and not self.pins.pinned_by_anyone(task.digest):
                store.unpin(task.digest)
            raise

    def unpin(self, task: TaskArtifact, tenant: str) -> bool:
        """Drop `tenant`'s pin (the task stays pinned while another tenant pins it); returns
        whether the task is resident."""
        _, still = self.pins.remove(tenant, task.digest)
        store = self.pool if get_method(task.method).mixable else self.cache
        if still:
            return store.contains(task.digest)
        return store.unpin(task.digest)

    def release_pin(self, digest: str, tenant: str) -> None:
        """Drop `tenant`'s pin of `digest` wherever it is held: another replica's unpin or
        delete of that task (app/api/replica_sync.py). Nothing when it held none."""
        had, still = self.pins.remove(tenant, digest)
        if had and not still:
            self.pool.unpin(digest)
            self.cache.unpin(digest)

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
            "model_cpu_s": self.batcher.model_cpu.total,  # CPU of model calls, tokenizing included
            "tokenize_s": TOKENIZE.total,
            "queue_wait_s": self.batcher.queue_waits.total,
            "requests_batched": self.batcher.queue_waits.count,
            "max_batch_tokens": self.batcher.max_batch_tokens,
            "max_queue": self.batcher.max_queue,
            "max_queue_ms": self.batcher.max_queue_s * 1000,
            "waiting": dict(self.batcher.waiting),
            "refused_queue_full": self.batcher.refused,
        }
