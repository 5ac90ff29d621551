"""TaskCache under concurrency: one build per task, and no buffer recycled while in use."""

import threading

import torch

from app.engine.artifact import TaskArtifact
from app.engine.base import load_base
from app.serving.cache import TaskCache
from tests.factories import make_task


def tasks_for(tiny_bert, n: int) -> list[TaskArtifact]:
    base = load_base(str(tiny_bert), 2, 0)
    m = len(list(base.model.parameters()))
    gen = torch.Generator().manual_seed(0)
    return [
        make_task(str(tiny_bert), base, theta=torch.randn(100 - m, generator=gen) * 20)
        for _ in range(n)
    ]


def test_concurrent_misses_build_a_task_once(tiny_bert):
    (task,) = tasks_for(tiny_bert, 1)
    cache = TaskCache(budget_mb=100)
    got, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        got.append(cache.get(task))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(e is got[0] for e in got)
    assert cache.stats.misses == 1 and cache.stats.hits == 3
    assert cache.stats.rebuild_seconds.count == 1


def test_buffer_in_use_is_never_recycled(tiny_bert):
    first, second, third = tasks_for(tiny_bert, 3)
    cache = TaskCache(budget_mb=0.17)  # room for two tiny tasks (0.081 MB each)
    with cache.use(first) as held:
        before = held.flat.clone()
        cache.get(second)  # room left: a new buffer
        cache.get(third)  # evicts `second`, not `first` (a batch holds it), and reuses its buffer
        assert cache.stats.evictions == 1 and cache.stats.recycled == 1
        assert torch.equal(held.flat, before) and cache.contains(first.digest)
        assert not cache.contains(second.digest) and cache.buffers_peak == 2
    assert held.users == 0
