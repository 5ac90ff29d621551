"""TaskCache's memory budget: every live task buffer counts (resident, being built, in use), a
build waits for memory or fails with a 503-class error, pins are capped, and a base's weights
are held once."""

import random
import threading
import time

import pytest
import torch

from app.engine.base import load_base
from app.errors import ConflictError, ServiceBusyError
from app.serving.cache import TaskCache
from tests.factories import make_task
from tests.unit.test_serving_cache import tasks_for

ONE = 0.09  # MB: room for one tiny task (0.081 MB each)
TWO = 0.17  # room for two


def test_eight_threads_never_hold_more_buffers_than_the_budget(tiny_bert):
    """8 threads, a budget of 2 buffers, 6 tasks in random order, each held for a while as a
    batch would: the live buffers (measured by finalizers, not by the cache's own counting)
    never exceed 2, and every request is served."""
    tasks = tasks_for(tiny_bert, 6)
    cache = TaskCache(budget_mb=TWO, wait_s=60)
    cache.get(tasks[0])  # load the base first: the race is about task buffers
    errors, over = [], []
    barrier = threading.Barrier(8)

    def client(k: int) -> None:
        rng = random.Random(k)
        barrier.wait()
        try:
            for _ in range(12):
                task = rng.choice(tasks)
                with cache.use(task) as entry:
                    if cache.live_bytes > cache.budget or cache.buffers_live > 2:
                        over.append((cache.live_bytes, cache.buffers_live))
                    assert entry.users >= 1
                    time.sleep(rng.uniform(0, 0.004))  # a batch running on it
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and over == []
    assert cache.buffers_peak <= 2
    assert cache.live_bytes <= cache.budget and cache.stats.misses > 6
    assert cache.stats.recycled > 0  # churn reuses buffers rather than allocating


def test_a_build_waits_for_a_batch_to_release_memory(tiny_bert):
    first, second = tasks_for(tiny_bert, 2)
    cache = TaskCache(budget_mb=ONE, wait_s=30)
    got = []
    with cache.use(first) as held:
        before = held.flat.clone()
        waiter = threading.Thread(target=lambda: got.append(cache.get(second)))
        waiter.start()
        time.sleep(0.3)
        assert got == [] and cache.stats.waits == 1  # no room while the batch runs
        assert torch.equal(held.flat, before)
    waiter.join()
    assert got and cache.contains(second.digest) and not cache.contains(first.digest)
    assert cache.stats.recycled == 1 and cache.buffers_peak == 1


def test_memory_held_too_long_is_a_503_not_more_memory(tiny_bert):
    first, second = tasks_for(tiny_bert, 2)
    cache = TaskCache(budget_mb=ONE, wait_s=0.2)
    with cache.use(first), pytest.raises(ServiceBusyError) as err:
        cache.get(second)
    assert err.value.code == "serving_memory_busy"
    assert "KILOTASK_SERVING_CACHE_MB" in err.value.message
    assert cache.stats.refused == 1 and cache.buffers_peak == 1 and cache.live_bytes <= cache.budget
    cache.get(second)  # free again: served, in the first task's buffer
    assert cache.stats.recycled == 1 and cache.buffers_live == 1


def test_a_task_larger_than_the_whole_budget_is_refused(tiny_bert):
    (task,) = tasks_for(tiny_bert, 1)
    cache = TaskCache(budget_mb=0.05)
    with pytest.raises(ServiceBusyError, match="more than the whole serving budget") as err:
        cache.get(task)
    assert err.value.code == "serving_budget_too_small" and cache.buffers_peak == 0


def test_pins_are_capped_by_the_budget(tiny_bert):
    t1, t2, t3 = tasks_for(tiny_bert, 3)
    cache = TaskCache(budget_mb=TWO, wait_s=30)
    cache.get(t1, pin=True)
    cache.get(t2, pin=True)
    with pytest.raises(ConflictError) as err:
        cache.get(t3, pin=True)
    message = err.value.message
    assert "KILOTASK_SERVING_CACHE_MB = 0.17 MB" in message and "2 pinned" in message
    start = time.monotonic()
    with pytest.raises(ServiceBusyError) as busy:  # unpinned: no room either, and no waiting
        cache.get(t3)
    assert busy.value.code == "serving_budget_pinned" and time.monotonic() - start < 5
    assert cache.buffers_peak == 2
    assert cache.unpin(t1.digest)
    cache.get(t3, pin=True)  # t1 is evictable again: t3 takes its buffer
    assert not cache.contains(t1.digest) and cache.stats.recycled == 1
    assert cache.describe()["pinned_tasks"] == 2


def test_pinning_a_resident_task_needs_no_room(tiny_bert):
    t1, t2 = tasks_for(tiny_bert, 2)
    cache = TaskCache(budget_mb=TWO)
    cache.get(t1)
    cache.get(t2)
    cache.get(t1, pin=True)
    cache.get(t2, pin=True)
    assert cache.describe()["pinned_tasks"] == 2 and cache.stats.misses == 2


def test_a_base_is_held_once(tiny_bert):
    """The loaded module's parameters are views of the flat θ_0 (one copy of the weights), and
    the module still computes what a freshly loaded base computes."""
    (task,) = tasks_for(tiny_bert, 1)
    cache = TaskCache(budget_mb=1)
    cache.get(task)
    base = cache._bases[str(tiny_bert)]
    theta0 = base.theta0
    lo = theta0.data_ptr()
    hi = lo + theta0.numel() * theta0.element_size()
    params = list(base.loaded.model.parameters())
    assert sum(p.numel() for p in params) == theta0.numel()
    for p in params:
        assert p.untyped_storage().data_ptr() == theta0.untyped_storage().data_ptr()
        assert lo <= p.data_ptr() < hi
    assert cache.describe()["bases_mb"] == pytest.approx(theta0.numel() * 4 / 2**20)
    fresh = load_base(str(tiny_bert), 2, 0).model
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.inference_mode():
        torch.testing.assert_close(
            cache.base_model(str(tiny_bert)).model(input_ids=ids).logits,
            fresh(input_ids=ids).logits,
            rtol=1e-6,  # not 0: weights at other addresses may take another SIMD path
            atol=1e-7,
        )


def test_rebuilds_on_the_shared_base_equal_reconstruct_bitwise(tiny_bert):
    """With the base module reading θ_0 itself, a task built by the cache (new buffer, then
    recycled) still equals `reconstruct` exactly, and θ_0 is never written."""
    from app.engine.reconstruct import reconstruct

    tasks = tasks_for(tiny_bert, 2)
    cache = TaskCache(budget_mb=ONE)
    base = cache.base_model(str(tiny_bert))
    theta0 = cache._bases[str(tiny_bert)].theta0.clone()
    for task in tasks:  # the second one recycles the first one's buffer
        got = dict(cache.get(task).model.named_parameters())
        want = dict(reconstruct(load_base(str(tiny_bert), 2, task.seed), task).named_parameters())
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert cache.stats.recycled == 1
    assert torch.equal(cache._bases[str(tiny_bert)].theta0, theta0)
    assert base is cache.base_model(str(tiny_bert))


def test_lowrank_pins_are_capped_by_their_budget(tiny_bert):
    from app.serving.lowrank_pool import LowRankPool
    from tests.factories import make_lowrank_task

    t1, t2 = (make_lowrank_task(str(tiny_bert), gen_seed=k) for k in range(2))
    cache = TaskCache(budget_mb=1)
    size = LowRankPool(16, cache.base_model).factors(t1).nbytes
    pool = LowRankPool(1.5 * size / 2**20, cache.base_model)  # room for one
    pool.factors(t1, pin=True)
    with pytest.raises(ConflictError) as err:
        pool.factors(t2, pin=True)
    assert "KILOTASK_SERVING_LOWRANK_CACHE_MB" in err.value.message
    assert "1 pinned" in err.value.message and not pool.contains(t2.digest)
    pool.factors(t2)  # unpinned: served (and evicted again later)
    assert pool.unpin(t1.digest)
    pool.factors(t2, pin=True)
    assert pool.describe()["pinned"] == 1


def test_one_base_serves_every_label_count(tiny_bert):
    """Tasks with 2, 3, 7 and 40 labels share ONE copy of the base's weights (issue 23 item 4:
    each label count used to load another copy, never freed or counted), and each still equals
    `reconstruct` on a base loaded with its own head."""
    from app.engine.reconstruct import reconstruct

    model = str(tiny_bert)
    cache = TaskCache(budget_mb=ONE * 8)
    sizes = []
    for count in (2, 3, 7, 40):
        labels = [f"c{i}" for i in range(count)]
        task = make_task(model, load_base(model, count, 0), labels=labels, seed=count)
        got = dict(cache.get(task).model.named_parameters())
        want = dict(reconstruct(load_base(model, count, task.seed), task).named_parameters())
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        sizes.append(cache.describe()["bases_mb"])
    assert list(cache._bases) == [model] and not cache._separate
    assert len(set(sizes)) == 1  # the bases' memory did not grow with the label counts
    assert cache.describe()["label_counts"] == [f"{model}:{c}" for c in (2, 3, 40, 7)]


def test_a_checkpoint_with_its_own_head_keeps_it(tiny_bert, tmp_path):
    """A checkpoint that holds a 2-label head loads it for 2-label tasks and seeds a new one
    for 3 labels: the shared body must not give either task the other's head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.engine.reconstruct import reconstruct

    folder = tmp_path / "with-head"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    model = str(folder)
    cache = TaskCache(budget_mb=ONE * 4)
    for count in (3, 2):
        labels = [f"c{i}" for i in range(count)]
        task = make_task(model, load_base(model, count, 0), labels=labels, seed=5)
        got = dict(cache.get(task).model.named_parameters())
        want = dict(reconstruct(load_base(model, count, task.seed), task).named_parameters())
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert len(cache._separate) == 1  # the 2-label head comes from the checkpoint: loaded apart


@pytest.mark.parametrize("spec", ["lowrank-v1", "lowrank-v2"])
def test_float16_factors_at_rest_halve_a_task_and_answer_as_float32_does(tiny_bert, spec):
    """KILOTASK_SERVING_LOWRANK_DTYPE=float16: a resident task takes half the bytes, and
    mixed and single-task batches answer within 1e-3 in probability of float32 factors."""
    from app.serving.lowrank_pool import LowRankPool, classify_mixed
    from tests.factories import make_lowrank_task

    torch.manual_seed(0)
    tasks = [make_lowrank_task(str(tiny_bert), gen_seed=k, seed=k % 2, spec=spec)
             for k in range(3)]  # fmt: skip
    cache = TaskCache(budget_mb=1)
    full = LowRankPool(16, cache.base_model)
    half = LowRankPool(16, cache.base_model, dtype="float16")
    assert 2 * half.factors(tasks[0]).nbytes == full.factors(tasks[0]).nbytes
    items = [("good film", None), ("a dull plot that goes nowhere at all", None), ("fine", None)]
    for rows in (tasks, [tasks[0]] * 3):  # mixed, then one task answering every row
        for a, b in zip(classify_mixed(full, rows, items), classify_mixed(half, rows, items),
                        strict=True):  # fmt: skip
            assert (a.softmax(-1) - b.softmax(-1)).abs().max() < 1e-3
