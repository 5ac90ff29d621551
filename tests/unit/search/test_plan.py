"""d90 search logic with synthetic metrics: sweep, bisection bracket, learning-rate search,
and resume from the results of a killed search."""

import math

import pytest

from app.engine.metrics import dev_stderr
from app.search.plan import D90Plan, run_key, search_d90


def step_metric(threshold_d: int, full: float = 0.9, low: float = 0.5):
    """Metric 'full' for d >= threshold_d, 'low' below; full fine-tuning gets 'full'."""

    def run(kind: str, d: int, lr: float) -> float:
        if kind == "full":
            return full
        return full if d >= threshold_d else low

    return run


def test_sweep_is_log_spaced_and_inclusive():
    assert D90Plan(min_d=10, max_d=100_000, sweep_points=5).sweep() == [
        10,
        100,
        1000,
        10_000,
        100_000,
    ]
    assert D90Plan(min_d=150, max_d=20_000, sweep_points=4).sweep() == [150, 766, 3915, 20_000]


@pytest.mark.parametrize("threshold_d", [11, 57, 3000, 99_999])
def test_bisection_brackets_the_threshold(threshold_d):
    plan = D90Plan(min_d=10, max_d=100_000, tolerance=0.25, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    result = search_d90(plan, step_metric(threshold_d))
    lo, hi = result.bracket
    assert lo < threshold_d <= hi and (hi / lo <= 1.25 or hi - lo == 1)
    assert result.d90 == hi and result.finished
    assert result.bar == pytest.approx(0.81)
    assert all(p.passed == (p.d >= threshold_d) for p in result.points)


def test_nothing_passing_is_right_censored():
    plan = D90Plan(min_d=10, max_d=1000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    none = search_d90(plan, step_metric(10**9))
    assert none.d90 is None and none.bracket is None and none.finished
    assert [p.d for p in none.points] == plan.sweep()
    assert none.censored == "right" and none.d90_text == "> 1000" and none.monotone
    assert none.first_pass is None and "Right-censored" in none.notes[0]


def test_smallest_d_passing_is_left_censored():
    plan = D90Plan(min_d=10, max_d=1000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    first = search_d90(plan, step_metric(1))
    assert first.d90 == 10 and first.bracket is None and first.first_pass == 10
    assert first.censored == "left" and first.d90_text == "<= 10" and first.monotone
    assert [p.d for p in first.points] == plan.sweep()  # the whole sweep: larger d checked
    assert len(first.notes) == 1 and "Left-censored" in first.notes[0]
    inside = search_d90(plan, step_metric(50))
    assert inside.censored is None and inside.d90_text == str(inside.d90) and not inside.notes


def test_each_d_keeps_its_best_learning_rate():
    def run(kind, d, lr):
        if kind == "full":
            return {1e-5: 0.7, 3e-5: 0.9}[lr]
        return 0.9 - abs(lr - 0.2) if d >= 500 else 0.3  # best lr is 0.2

    plan = D90Plan(min_d=100, max_d=10_000, lr_grid=(0.05, 0.2, 0.5), full_lr_grid=(1e-5, 3e-5))
    result = search_d90(plan, run)
    assert result.full_lr == 3e-5 and result.full_metric == 0.9
    passing = [p for p in result.points if p.passed]
    assert passing and all(p.lr == 0.2 and p.metric == pytest.approx(0.9) for p in passing)


def test_resume_skips_finished_runs_and_ends_the_same():
    plan = D90Plan(min_d=10, max_d=100_000, lr_grid=(0.1, 0.3), full_lr_grid=(1e-5,))
    whole = search_d90(plan, step_metric(3000))

    class Killed(Exception):
        pass

    saved: dict[str, float] = {}
    calls = []

    def dies_after_five(kind, d, lr):
        if len(calls) == 5:
            raise Killed
        calls.append(run_key(kind, d, lr))
        return step_metric(3000)(kind, d, lr)

    with pytest.raises(Killed):
        search_d90(plan, dies_after_five, on_result=saved.__setitem__)
    assert len(saved) == 5

    again = []

    def counting(kind, d, lr):
        again.append(run_key(kind, d, lr))
        return step_metric(3000)(kind, d, lr)

    resumed = search_d90(plan, counting, done=saved)
    assert not set(again) & set(saved)  # nothing finished is run twice
    assert len(saved) + len(again) == len(set(saved) | set(again))
    assert resumed.d90 == whole.d90 and resumed.bracket == whole.bracket
    assert [p.d for p in resumed.points] == [p.d for p in whole.points]


def test_a_bar_not_above_the_majority_floor_stops_the_search():
    plan = D90Plan(min_d=10, max_d=1000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    calls = []

    def run(kind, d, lr):
        calls.append(kind)
        return 0.55 if kind == "full" else 0.6

    result = search_d90(plan, run, floor=0.51)  # bar 0.495 <= majority 0.51
    assert result.degenerate and result.finished and result.d90 is None
    assert calls == ["full"] and result.points == []
    assert not search_d90(plan, step_metric(100), floor=0.5).degenerate


def test_defaults_are_four_learning_rates_and_a_ten_percent_bracket():
    plan = D90Plan()
    assert len(plan.lr_grid) == 4 and plan.tolerance == pytest.approx(0.1) and plan.seeds == 1
    # seeds = 1 stays out of the settings, so searches from before seeds keep their fingerprint
    assert "seeds" not in plan.settings() and D90Plan(seeds=3).settings()["seeds"] == 3


@pytest.mark.parametrize("threshold_d", [11, 57, 110, 3000, 99_999])
def test_default_tolerance_brackets_d90_within_ten_percent(threshold_d):
    plan = D90Plan(min_d=10, max_d=100_000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    result = search_d90(plan, step_metric(threshold_d))
    lo, hi = result.bracket
    assert lo < threshold_d <= hi and (hi / lo <= 1.10 + 1e-9 or hi - lo == 1)
    assert result.d90 == hi and result.monotone and result.censored is None


def test_a_larger_failing_d_is_reported_not_bisected_silently():
    """Passes at 50..499, fails 500..2999, passes from 3000: d90 is the smallest passing d above
    which every trained d passes, found by bisection there; the contradiction is reported."""

    def run(kind, d, lr):
        if kind == "full":
            return 0.9
        return 0.9 if 50 <= d < 500 or d >= 3000 else 0.5

    plan = D90Plan(min_d=10, max_d=100_000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    result = search_d90(plan, run)
    assert not result.monotone and result.first_pass == 100
    assert {"passed_d": 100, "passed_metric": 0.9, "failed_d": 1000, "failed_metric": 0.5} in (
        result.violations
    )
    lo, hi = result.bracket
    assert 1000 <= lo < 3000 <= hi and hi / lo <= 1.10 + 1e-9 and result.d90 == hi
    assert all(p.d >= 1000 for p in result.points[5:])  # bisection only above the last fail
    assert result.censored is None and any("Not monotone" in n for n in result.notes)


def test_a_failing_max_d_after_passes_is_right_censored_and_not_monotone():
    def run(kind, d, lr):
        return 0.9 if kind == "full" or 50 <= d < 500 else 0.5

    plan = D90Plan(min_d=10, max_d=100_000, lr_grid=(0.1,), full_lr_grid=(1e-5,))
    result = search_d90(plan, run)
    assert result.d90 is None and result.censored == "right" and result.first_pass == 100
    assert not result.monotone and [(v["passed_d"], v["failed_d"]) for v in result.violations] == [
        (100, 1000),
        (100, 10_000),
        (100, 100_000),
    ]
    assert len(result.points) == 5  # no bracket, no bisection


def seeded(full=0.9, near=(0.80, 0.84, 0.85), from_d=1000):
    """full fine-tuning `full` (bar 0.81); below from_d 0.5; from_d up to 9999 seed s gets
    near[s] at lr 0.2 (0.05 less at other rates); from 10_000 0.9."""

    def run(kind, d, lr, seed=0):
        if kind == "full":
            return full
        if d < from_d:
            return 0.5
        if d >= 10_000:
            return 0.9
        return near[seed] - (0 if lr == 0.2 else 0.05)

    return run


def test_seeds_near_the_bar_decide_on_their_mean():
    calls = []

    def run(*r):
        calls.append(r)
        return seeded()(*r)

    plan = D90Plan(min_d=100, max_d=100_000, sweep_points=4, lr_grid=(0.1, 0.2),
                   full_lr_grid=(1e-5,), seeds=3)  # fmt: skip
    result = search_d90(plan, run, stderr=lambda m: 0.02)
    by_d = {p.d: p for p in result.points}
    near = by_d[1000]  # seed 0 fails by 0.01 < 0.02, the mean of 0.80, 0.84, 0.85 passes
    assert near.near_bar and near.lr == 0.2 and near.seeds == [0.80, 0.84, 0.85]
    assert near.metric == pytest.approx(0.83) and near.passed
    assert near.sd == pytest.approx(0.026458, abs=1e-6) and near.stderr == 0.02
    far = by_d[100_000]
    assert not far.near_bar and far.seeds == [0.9] and far.sd is None
    extra = [r for r in calls if len(r) == 4]  # more seeds only near the bar, at the best lr
    assert extra and {r[2] for r in extra} == {0.2} and {r[3] for r in extra} == {1, 2}
    assert all(100 <= r[1] < 10_000 for r in extra)
    assert result.d90 == 1000 and result.bracket[1] == 1000 and 1000 / result.bracket[0] <= 1.1

    sinks = search_d90(plan, seeded(near=(0.82, 0.76, 0.78)), stderr=lambda m: 0.02)
    failing = {p.d: p for p in sinks.points}[1000]  # seed 0 passes by 0.01; the mean fails
    assert (
        failing.near_bar
        and not failing.passed
        and failing.metric == pytest.approx(0.7867, abs=1e-4)
    )
    assert sinks.d90 == 10_000 and all(not p.passed for p in sinks.points if p.d < 10_000)


def test_one_seed_near_the_bar_is_flagged():
    plan = D90Plan(min_d=100, max_d=100_000, sweep_points=4, lr_grid=(0.2,), full_lr_grid=(1e-5,),
                   tolerance=4.0)  # fmt: skip
    result = search_d90(plan, seeded(near=(0.812,)), stderr=lambda m: 0.02)
    assert result.d90 == 1000 and all(len(p.seeds) == 1 for p in result.points)
    assert any("d = 1000 passes by 0.0020, within one standard error" in n for n in result.notes)


def test_resume_with_seeds_skips_finished_runs_and_ends_the_same():
    plan = D90Plan(min_d=100, max_d=100_000, sweep_points=4, lr_grid=(0.1, 0.2),
                   full_lr_grid=(1e-5,), seeds=3)  # fmt: skip
    whole = search_d90(plan, seeded(), stderr=lambda m: 0.02)

    class Killed(Exception):
        pass

    saved: dict[str, float] = {}

    def dies_at_the_second_seed(*r):
        if len(r) == 4 and r[3] == 2:
            raise Killed
        return seeded()(*r)

    with pytest.raises(Killed):
        search_d90(plan, dies_at_the_second_seed, on_result=saved.__setitem__,
                   stderr=lambda m: 0.02)  # fmt: skip
    assert "said:d=1000:lr=0.2:seed=1" in saved and "said:d=1000:lr=0.2" in saved
    again = []

    def counting(*r):
        again.append(run_key(*r))
        return seeded()(*r)

    resumed = search_d90(plan, counting, done=saved, stderr=lambda m: 0.02)
    assert again[0] == "said:d=1000:lr=0.2:seed=2" and not set(again) & set(saved)
    assert resumed.to_dict() == whole.to_dict()


def test_run_keys_of_seed_zero_are_the_keys_from_before_seeds():
    assert run_key("said", 200, 0.2) == "said:d=200:lr=0.2" == run_key("said", 200, 0.2, 0)
    assert run_key("did", 200, 0.05, 2) == "did:d=200:lr=0.05:seed=2"


def test_dev_standard_errors():
    assert dev_stderr("accuracy", 0.5, 100) == pytest.approx(0.05)
    assert dev_stderr("accuracy", 0.7125, 408) == pytest.approx(0.0224, abs=1e-4)  # MRPC's bar
    assert dev_stderr("f1", 0.8, 0) is None and dev_stderr("f1", 0.8, 9, positives=0) is None
    assert dev_stderr("f1", 0.8, 400, positives=100) == pytest.approx(0.04)  # binary
    assert dev_stderr("f1", 0.8, 100) == pytest.approx(0.04)  # macro-F1 over all the rows
    assert dev_stderr("mcc", 0.0, 1044) == pytest.approx(1 / math.sqrt(1043))
    assert dev_stderr("mcc", 0.5, 101) == pytest.approx(0.075)
