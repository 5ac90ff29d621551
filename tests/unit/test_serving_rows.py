"""Inputs in serving: never tokenized past the model's positions (position_limit), and one bad
input never fails the other inputs batched with it."""

import asyncio
import dataclasses
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from app.engine.base import NO_POSITION_LIMIT, load_base, position_limit
from app.engine.errors import BaseModelMismatchError
from app.errors import InvalidInputError
from app.serving import batcher as batcher_module
from app.serving.batcher import MicroBatcher
from app.serving.cache import TaskCache
from app.serving.lowrank_pool import LowRankPool
from tests.factories import WORDS, make_lowrank_task
from tests.unit.test_serving_cache import tasks_for

TINY = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
LONG = " ".join(WORDS * 10)  # 200 words: past tiny_bert's 64 positions


def test_position_limit_bert_style():
    config = BertConfig(**TINY, intermediate_size=16, max_position_embeddings=512)
    assert position_limit(config, None) == 512
    assert position_limit(BertForSequenceClassification(config), None) == 512
    assert position_limit(config, SimpleNamespace(model_max_length=128)) == 128
    assert position_limit(config, SimpleNamespace(model_max_length=int(1e30))) == 512


def test_position_limit_roberta_style_has_offset_two():
    config = RobertaConfig(
        **TINY, intermediate_size=16, max_position_embeddings=514, pad_token_id=1
    )
    assert position_limit(config, None) == 512  # positions start at padding_idx + 1 = 2
    model = RobertaForSequenceClassification(config)
    assert position_limit(model, SimpleNamespace(model_max_length=512)) == 512
    assert position_limit(model, None) == 512


def test_position_limit_of_a_loaded_base(tiny_bert):
    base = load_base(str(tiny_bert), 2, 0)
    assert position_limit(base) == 64 == position_limit(base.model, base.tokenizer)
    assert position_limit(SimpleNamespace(), None) == NO_POSITION_LIMIT


def run(coro):
    return asyncio.run(coro)


def test_long_inputs_are_truncated_to_the_positions(tiny_bert):
    """A task whose max_length (4096) exceeds the model's 64 positions is served, exactly as the
    same task with max_length 64; the same for a lowrank task in a mixed batch."""
    (said,) = tasks_for(tiny_bert, 1)
    lowrank = make_lowrank_task(str(tiny_bert))
    cache = TaskCache(budget_mb=1)
    pool = LowRankPool(16, cache.base_model)
    batcher = MicroBatcher(cache, max_batch=8, max_wait_ms=1, workers=1, pool=pool)

    async def scores():
        out = []
        for task in (said, lowrank):
            for max_length in (4096, 64):
                one = dataclasses.replace(task, max_length=max_length)
                out.append(await batcher.submit(one, [(LONG, None), ("good movie", None)]))
        return out

    said_long, said_64, low_long, low_64 = run(scores())
    assert torch.equal(said_long, said_64) and torch.equal(low_long, low_64)


@pytest.fixture()
def poisoned(monkeypatch):
    """classify fails on a whole batch whenever one of its texts contains POISON (as a model
    error on one input would); records the size of every model call."""
    calls = []
    real = batcher_module.classify

    def classify(entry, task, texts, pairs):
        calls.append(len(texts))
        if any("POISON" in t for t in texts):
            raise ValueError("cannot embed token POISON")
        return real(entry, task, texts, pairs)

    monkeypatch.setattr(batcher_module, "classify", classify)
    return calls


def test_a_poisoned_row_fails_only_its_own_request(tiny_bert, poisoned):
    (task,) = tasks_for(tiny_bert, 1)
    cache = TaskCache(budget_mb=1)
    batcher = MicroBatcher(cache, max_batch=16, max_wait_ms=50, workers=1)
    healthy = [[("good movie", None)], [("awful dull plot", None), ("love it", None)]]

    async def together():
        return await asyncio.gather(
            batcher.submit(task, healthy[0]),
            batcher.submit(task, [("the POISON film", None)]),
            batcher.submit(task, healthy[1]),
            return_exceptions=True,
        )

    first, bad, third = run(together())
    assert poisoned[0] == 4  # all three clients' inputs went into one batch first
    assert isinstance(bad, InvalidInputError) and bad.code == "input_failed"
    assert "POISON" in bad.message and "ValueError" in bad.message
    alone = [run(batcher.submit(task, [item])) for items in healthy for item in items]
    torch.testing.assert_close(first, alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(third, torch.cat(alone[1:]), rtol=0, atol=1e-6)


def test_a_lone_failing_row_gets_a_4xx(tiny_bert, poisoned):
    (task,) = tasks_for(tiny_bert, 1)
    batcher = MicroBatcher(TaskCache(budget_mb=1), max_batch=16, max_wait_ms=1, workers=1)
    with pytest.raises(InvalidInputError, match="POISON"):
        run(batcher.submit(task, [("POISON", None)]))


def test_a_bad_task_in_a_mixed_batch_fails_only_its_own_request(tiny_bert, monkeypatch):
    """Lowrank rows of many tasks share one forward: a task whose base digest is wrong fails
    its own request (422-class), and the other clients' rows are served as if alone."""
    calls = []
    real = batcher_module.classify_mixed

    def classify_mixed(pool, tasks, items):
        calls.append(len(items))
        return real(pool, tasks, items)

    monkeypatch.setattr(batcher_module, "classify_mixed", classify_mixed)
    good = [make_lowrank_task(str(tiny_bert), gen_seed=k) for k in range(2)]
    bad = make_lowrank_task(str(tiny_bert), gen_seed=9, base_digest="f" * 64)
    cache = TaskCache(budget_mb=1)
    pool = LowRankPool(16, cache.base_model)
    batcher = MicroBatcher(cache, max_batch=16, max_wait_ms=50, workers=1, pool=pool)

    async def together():
        return await asyncio.gather(
            batcher.submit(good[0], [("good movie", None)]),
            batcher.submit(bad, [("nice", None)]),
            batcher.submit(good[1], [("awful plot", None), ("so dull", None)]),
            return_exceptions=True,
        )

    first, refused, third = run(together())
    assert calls[0] == 4  # the three clients' rows went into one forward first
    assert isinstance(refused, BaseModelMismatchError)
    alone_first = run(batcher.submit(good[0], [("good movie", None)]))
    alone_third = run(batcher.submit(good[1], [("awful plot", None), ("so dull", None)]))
    torch.testing.assert_close(first, alone_first, rtol=0, atol=1e-6)
    torch.testing.assert_close(third, alone_third, rtol=0, atol=1e-6)


def test_one_tenants_flood_delays_anothers_request_by_at_most_one_batch(tiny_bert, monkeypatch):
    """Tenant A sends 40 inputs (ten requests of a 4-input batch) to its lowrank task, then
    tenant B one input to its own: B's row runs in the first or second batch (it ran in the
    eleventh, after the whole flood, when a queue was served in arrival order)."""
    batches: list[list[str]] = []
    real = batcher_module.classify_mixed

    def classify_mixed(pool, tasks, items):
        batches.append([text for text, _ in items])
        return real(pool, tasks, items)

    monkeypatch.setattr(batcher_module, "classify_mixed", classify_mixed)
    mine, theirs = (make_lowrank_task(str(tiny_bert), gen_seed=k) for k in range(2))
    cache = TaskCache(budget_mb=1)
    batcher = MicroBatcher(cache, max_batch=4, max_wait_ms=20, workers=1,
                           pool=LowRankPool(16, cache.base_model))  # fmt: skip

    async def flood_then_one():
        flood = asyncio.create_task(
            batcher.submit(mine, [(f"flood {i}", None) for i in range(40)], "tenant-a")
        )
        await asyncio.sleep(0)  # the flood is queued first
        one = asyncio.create_task(batcher.submit(theirs, [("just me", None)], "tenant-b"))
        return await asyncio.gather(flood, one)

    flooded, alone = run(flood_then_one())
    assert flooded.shape[0] == 40 and alone.shape[0] == 1
    where = next(i for i, texts in enumerate(batches) if "just me" in texts)
    assert where <= 1, [len(b) for b in batches]
    assert sum(len(b) for b in batches) == 41


def test_over_the_queue_bound_requests_are_refused_at_once_and_the_rest_served(
    tiny_bert, monkeypatch
):
    """20 one-input requests of one tenant at once against a queue of 8 and a slow model: 8
    are served, 12 refused (503, Retry-After 1) before any batch finishes, each in well under
    10 ms; another tenant's first request is still admitted while the queue is full."""
    from app.errors import ServiceBusyError

    real = batcher_module.classify_mixed

    def slow(pool, tasks, items):
        time.sleep(0.2)
        return real(pool, tasks, items)

    monkeypatch.setattr(batcher_module, "classify_mixed", slow)
    task = make_lowrank_task(str(tiny_bert))
    cache = TaskCache(budget_mb=1)
    batcher = MicroBatcher(cache, max_batch=4, max_wait_ms=1, workers=1, max_queue=8,
                           pool=LowRankPool(16, cache.base_model))  # fmt: skip

    async def one(i: int):
        start = time.perf_counter()
        try:
            return await batcher.submit(task, [(f"text {i}", None)], "flooder")
        except ServiceBusyError as exc:
            return exc, time.perf_counter() - start

    async def burst():
        flood = asyncio.gather(*(one(i) for i in range(20)))
        await asyncio.sleep(0)
        other = batcher.submit(task, [("someone else", None)], "another-tenant")
        return await asyncio.gather(flood, other)

    results, other = run(burst())
    assert other.shape == (1, 2)
    served = [r for r in results if isinstance(r, torch.Tensor)]
    refused = [r for r in results if isinstance(r, tuple)]
    assert len(served) == 8 and all(r.shape == (1, 2) for r in served)
    assert len(refused) == 12 and batcher.refused == 12
    assert all(exc.retry_after == 1 and exc.code == "serving_queue_full" for exc, _ in refused)
    assert max(seconds for _, seconds in refused) < 0.01
    assert batcher.waiting == {}  # every admitted input was taken
    # once the queue drains, a request is admitted again
    assert run(batcher.submit(task, [("again", None)])).shape == (1, 2)


def test_the_queue_is_bounded_in_model_time_too(tiny_bert, monkeypatch):
    """With a model that answers 5 inputs a second (learned from five batches) and a 550 ms
    bound, a tenant's third waiting input (0.6 s of work) is refused at once though the count
    cap (64) is far off; the message names the time bound and its setting."""
    from app.errors import ServiceBusyError

    real = batcher_module.classify_mixed

    def slow(pool, tasks, items):
        time.sleep(0.2 * len(items))
        return real(pool, tasks, items)

    monkeypatch.setattr(batcher_module, "classify_mixed", slow)
    task = make_lowrank_task(str(tiny_bert))
    cache = TaskCache(budget_mb=1)
    batcher = MicroBatcher(cache, max_batch=4, max_wait_ms=1, workers=1, max_queue=64,
                           pool=LowRankPool(16, cache.base_model), max_queue_ms=550)  # fmt: skip
    for i in range(5):  # five batches one after another: the answer rate, 5 inputs a second
        run(batcher.submit(task, [(f"learn the rate {i}", None)], "t"))

    async def flood():
        async def one(i: int):
            try:
                return await batcher.submit(task, [(f"text {i}", None)], "t")
            except ServiceBusyError as exc:
                return exc

        return await asyncio.gather(*(one(i) for i in range(6)))

    results = run(flood())
    refused = [r for r in results if isinstance(r, ServiceBusyError)]
    assert len(refused) == 4, results  # 1st admitted alone, 2nd 0.4 s of work, 3rd 0.6 s
    assert "KILOTASK_SERVING_MAX_QUEUE_MS" in refused[0].message
    assert all(r.code == "serving_queue_full" for r in refused)


def test_length_aware_batches_pad_little_and_answer_each_row_in_order(tiny_bert, monkeypatch):
    """16 one-input requests of two lowrank tasks, short and long texts interleaved: batches of
    8 come out one length each (arrival order mixed them in every batch), and every row's
    answer equals `predict_task` on that task and text alone, in input order."""
    from app.engine.data import ColumnSpec, LabelledText
    from app.engine.pipeline import predict_task

    batches: list[list[str]] = []
    real = batcher_module.classify_mixed

    def recorded(pool, tasks, items):
        batches.append([text for text, _ in items])
        return real(pool, tasks, items)

    monkeypatch.setattr(batcher_module, "classify_mixed", recorded)
    tasks = [make_lowrank_task(str(tiny_bert), gen_seed=k) for k in range(2)]
    short = [f"{w} film" for w in ("good", "bad", "dull", "fine")] * 2
    long = [" ".join(["great plot and a very nice movie"] * 6) + f" {k}" for k in range(8)]
    texts = [t for pair in zip(short, long, strict=True) for t in pair]
    cache = TaskCache(budget_mb=1)
    batcher = MicroBatcher(cache, max_batch=8, max_wait_ms=20, workers=1,
                           pool=LowRankPool(16, cache.base_model))  # fmt: skip

    async def all_at_once():
        return await asyncio.gather(*(batcher.submit(tasks[i % 3 % 2], [(text, None)], "one")
                                      for i, text in enumerate(texts)))  # fmt: skip

    got = run(all_at_once())
    assert sorted(len(b) for b in batches) == [8, 8]
    for batch in batches:
        assert len({text in long for text in batch}) == 1, batch  # one length per batch
    for i, text in enumerate(texts):
        task = tasks[i % 3 % 2]
        data = LabelledText([text], None, None, ColumnSpec("sentence"), ["sentence"])
        want = torch.tensor(predict_task(task, data).scores[0])
        torch.testing.assert_close(got[i][0].softmax(-1), want, rtol=1e-5, atol=1e-5)
