"""How a mixed lowrank batch spends its work and memory (issue 24 item 3): each row pays for its
own seed's rank only, heads are applied to their own rows without per-row copies, and the
seeds' tensors stay under a byte cap however many seeds are served."""

import torch

from app.engine.base import load_base
from app.engine.lowrank import LowRankConfig, MixedLowRankModel
from app.engine.lowrank.layout import dim_range, layout_for, projected_dim
from app.engine.lowrank.seed_cache import SeedCache

IDS = torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]])
MASK = (IDS != 0).long()


def build(serving: MixedLowRankModel, seed: int, rank: int = 4, labels: int = 2, scale=1.0):
    base = serving.base
    config = LowRankConfig(dim=60, seed=seed, rank=rank)
    high = dim_range(layout_for(base.model, base.seeded, config))[1]
    config = LowRankConfig(dim=min(60, high), seed=seed, rank=rank)
    layout = serving.layout(config, labels)
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(projected_dim(layout, config.dim), generator=gen) * scale
    return serving.build(config, labels, theta, torch.ones(layout.num_scales))


def test_each_row_pays_its_own_seeds_rank(tiny_bert):
    serving = MixedLowRankModel(load_base(str(tiny_bert), 2, 0))
    rows = [build(serving, 1, 2), build(serving, 2, 8), build(serving, 3, 4), build(serving, 2, 8)]
    batch = serving._prepare(rows)
    for groups in batch.targets.values():
        assert sorted(g.a.shape[0] for g in groups) == [2, 4, 8]  # not 14 for every row
        assert sum(g.b.shape[0] for g in groups) == len(rows)


def test_heads_are_the_tasks_own_tensors_not_copies(tiny_bert):
    serving = MixedLowRankModel(load_base(str(tiny_bert), 2, 0))
    a, b = build(serving, 1), build(serving, 2, labels=3)
    batch = serving._prepare([a, b, a, a, b])
    for name, segments in batch.heads.items():
        owners = [(a, [0, 2, 3]), (b, [1, 4])]
        for (rows, w, _), (task, want) in zip(segments, owners, strict=True):
            assert w.data_ptr() == task.head[name + ".weight"].data_ptr()
            assert rows.tolist() == want


def test_a_thousand_seeds_stay_under_the_cap_and_evicted_ones_come_back_equal(tiny_bert):
    cache = SeedCache(max_bytes=64 * 1024)
    serving = MixedLowRankModel(load_base(str(tiny_bert), 2, 0), seed_cache=cache)
    encoded = {"input_ids": IDS[:1], "attention_mask": MASK[:1]}
    first = build(serving, 0, scale=3.0)
    before = serving.logits([first], encoded)
    peak = 0
    for seed in range(1, 1001):
        serving._prepare([build(serving, seed)])  # what a batch of that seed fetches
        peak = max(peak, cache.nbytes)
    assert peak <= cache.max_bytes and cache.evictions > 0
    assert cache.describe()["seed_mb"] <= 64 / 1024
    torch.testing.assert_close(serving.logits([first], encoded), before, rtol=1e-6, atol=1e-6)
