"""The process-wide projection cache: G keyed by what it depends on (seed, block size, block
count, device, dtype), not by d; bounded in bytes; counted in the serving stats; built once."""

import threading
import time

import pytest
import torch

from app.engine import fastfood, projections
from app.engine.fastfood import FastfoodProjection
from app.engine.projections import clear_projection_cache, get_projection, projection_cache_info

D = 50_000  # 49 blocks of 1024: G is 200,704 bytes


@pytest.fixture(autouse=True)
def empty_cache():
    clear_projection_cache()
    yield
    clear_projection_cache()


def g_bytes(d: int) -> int:
    n = fastfood.block_size(d)
    return -(-D // n) * n * 4


def test_d_999_and_1000_share_one_g():
    a, b = get_projection(999, D, 3), get_projection(1000, D, 3)
    assert a is not b and a.g is b.g
    info = projection_cache_info()
    assert info["g_tables"] == 1 and info["g_bytes"] == g_bytes(1000)
    assert info["projections"] == 2
    assert info["bytes"] == g_bytes(1000) + sum(p.b.nbytes + p.perm.nbytes for p in (a, b))
    x = torch.randn(999)
    assert torch.equal(a.forward(x), FastfoodProjection(999, D, 3).forward(x))  # same numbers
    assert get_projection(2000, D, 3).g is not a.g  # another block size: another G


def test_concurrent_cold_builds_make_g_once(monkeypatch):
    made = []
    real = fastfood.generate_g

    def slow(*args):
        made.append(args)
        time.sleep(0.2)  # widen the window in which a second build could start
        return real(*args)

    monkeypatch.setattr(projections, "generate_g", slow)
    barrier, got = threading.Barrier(6), []

    def ask(d: int) -> None:
        barrier.wait()
        got.append(get_projection(d, D, 11))

    threads = [threading.Thread(target=ask, args=(999 + k % 2,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(got) == 6
    assert all(p.g is got[0].g for p in got)
    assert len({id(p) for p in got}) == 2  # one instance per d


def test_bounded_in_bytes_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(projections, "PROJECTION_CACHE_BYTES", 2 * g_bytes(1000) + 100_000)
    first = get_projection(1000, D, 1)
    get_projection(1000, D, 2)
    get_projection(1000, D, 1)  # seed 1 is now the most recent
    get_projection(1000, D, 3)  # over the bound: seed 2 goes, with its instance
    info = projection_cache_info()
    assert info["g_tables"] == 2 and info["projections"] == 2
    assert info["bytes"] <= projections.PROJECTION_CACHE_BYTES
    assert get_projection(1000, D, 1) is first
    seeds = {key[1] for key in projections._CACHE if key[0] == "g"}
    assert seeds == {1, 3}


def test_a_g_larger_than_the_bound_is_kept_while_newest(monkeypatch):
    monkeypatch.setattr(projections, "PROJECTION_CACHE_BYTES", 1000)
    a = get_projection(1000, D, 5)
    assert get_projection(1000, D, 5) is a  # not rebuilt on every call
    get_projection(1000, D, 6)
    info = projection_cache_info()
    assert info["g_tables"] == 1 and info["projections"] == 1  # only the newest


def test_runtime_stats_show_the_projection_cache():
    from app.serving.runtime import ServingRuntime

    get_projection(1000, D, 8)
    runtime = ServingRuntime.create(budget_mb=10, max_batch=4, max_wait_ms=1, workers=1)
    shown = runtime.describe()["projection_cache"]
    info = projection_cache_info()
    assert shown["mb"] == pytest.approx(info["bytes"] / 2**20) and shown["g_tables"] == 1
    assert shown["limit_mb"] == projections.PROJECTION_CACHE_BYTES / 2**20
