"""A tiny d90 search end to end (tiny BERT, tiny data): the files it writes, a resume after a
kill that redoes no finished run, and refusal to mix settings in one folder."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.cli import main
from app.engine.artifact import TaskArtifact
from app.engine.data import read_table
from app.search.d90 import run_d90
from app.search.plan import D90Plan, run_key
from app.search.setup import D90Setup, SearchMismatchError
from tests.factories import sentiment_rows, write_tsv


@pytest.fixture()
def data(tmp_path):
    return (
        write_tsv(tmp_path / "train.tsv", sentiment_rows(64, 0)),
        write_tsv(tmp_path / "dev.tsv", sentiment_rows(32, 1)),
    )


def cli_args(tiny_bert, data, out, *extra):
    train, dev = data
    return [
        "d90", "--model", str(tiny_bert), "--train", str(train), "--eval", str(dev),
        "--budget-steps", "16", "--batch-size", "16", "--max-length", "16", "--min-d", "10",
        "--max-d", "3000", "--sweep-points", "3", "--lr-grid", "0.2", "0.5",
        "--full-lr-grid", "1e-2", "--tolerance", "1.0", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_d90_cli_writes_results_csv_plot_and_task(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(cli_args(tiny_bert, data, out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and summary["d90"] == results["d90"]
    assert not results["degenerate"] and results["bar"] > results["floor"]  # full FT learned
    assert results["bar"] == pytest.approx(0.9 * results["full_metric"])
    # results.json states m and the grouping (tiny BERT by layer: embeddings, 2 layers, rest)
    assert (results["m"], results["said_groups"]) == (4, "layer")
    assert results["setup"]["precision"] == "fp32" and results["setup"]["device"] == "cpu"
    assert results["plan"]["min_d"] == 10 > results["m"]  # SAID's range starts above m
    runs = json.loads((out / "state.json").read_text())["runs"]
    rows = (out / "points.csv").read_text().splitlines()
    assert rows[0] == "kind,d,lr,seed,accuracy,train_accuracy,gap" and len(rows) == 1 + len(runs)
    assert len(runs) == 1 + 2 * len(results["points"])  # full once, then 2 learning rates per d
    for point in results["points"]:
        assert point["passed"] == (point["metric"] >= results["bar"])
        # the train sample and the relative gap (paper §5.3) of its best run, from its task file
        assert 0 <= point["train_metric"] <= 1
        if point["metric"] < 1:
            want = (point["train_metric"] - point["metric"]) / (1 - point["metric"])
            assert point["gap"] == pytest.approx(want, abs=1e-3)  # the file keeps 4 decimals
    if results["d90"] is not None:
        at = next(p for p in results["points"] if p["d"] == results["d90"])
        assert results["gap_at_d90"]["train_metric"] == at["train_metric"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "curve.svg").read_text()
    if results["d90"] is not None:
        task = TaskArtifact.load(out / "d90-task.safetensors")
        assert task.dim == results["d90"] and task.method == "said"


def test_search_stops_when_full_fine_tuning_learned_too_little(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(cli_args(tiny_bert, data, out, "--full-lr-grid", "1e-9")) == 0
    captured = capsys.readouterr()
    assert "majority class" in captured.err and json.loads(captured.out)["degenerate"] is True
    results = json.loads((out / "results.json").read_text())
    assert results["d90"] is None and results["points"] == [] and results["floor"] > 0
    assert list(json.loads((out / "state.json").read_text())["runs"]) == ["full:d=0:lr=1e-09"]
    assert (out / "curve.png").exists() and not (out / "d90-task.safetensors").exists()


def test_killed_search_resumes_without_redoing_runs(tiny_bert, data, tmp_path):
    train = read_table(data[0])
    dev = read_table(data[1], train.columns)
    setup = D90Setup(str(tiny_bert), budget_steps=16, batch_size=16, max_length=16)
    plan = D90Plan(min_d=10, max_d=3000, sweep_points=3, tolerance=1.0, lr_grid=(0.2, 0.5),
                   full_lr_grid=(1e-2,))  # fmt: skip
    out = tmp_path / "out"

    class Killed(Exception):
        pass

    finished = []

    def dies_after_three(kind, data):
        if kind == "run_finished":
            finished.append(data["run"])
            if len(finished) == 3:
                raise Killed

    with pytest.raises(Killed):
        run_d90(setup, plan, train, dev, out, on_event=dies_after_three)
    assert len(json.loads((out / "state.json").read_text())["runs"]) == 3
    started = []
    result = run_d90(
        setup, plan, train, dev, out, on_event=lambda k, d: k == "run_started" and started.append(d)
    )
    redone = {f"{s['kind']}:d={s['d']}:lr={s['lr']:g}" for s in started} & set(finished)
    assert not redone and result.finished
    assert len(json.loads((out / "state.json").read_text())["runs"]) == 3 + len(started)

    with pytest.raises(SearchMismatchError):  # same folder, other settings
        run_d90(D90Setup(str(tiny_bert), budget_steps=5), plan, train, dev, out)


def test_d90_cli_rejects_bad_arguments(tiny_bert, data, tmp_path, capsys):
    assert main(cli_args(tiny_bert, data, tmp_path / "a", "--budget-steps", "0")) == 2
    assert "must be positive" in capsys.readouterr().err
    # SAID's m depends on its grouping: 41 tensors, or embeddings + 2 layers + rest
    b = cli_args(tiny_bert, data, tmp_path / "b", "--max-d", "20", "--said-groups", "tensor")
    assert main(b) == 2
    assert "SAID needs d > 41: its 41 scales, one per tensor group," in capsys.readouterr().err
    assert main(cli_args(tiny_bert, data, tmp_path / "c", "--max-d", "4")) == 2
    assert "SAID needs d > 4: its 4 scales, one per layer group," in capsys.readouterr().err


def test_did_search_reuses_the_full_fine_tuning_of_a_said_search(tiny_bert, data, tmp_path, capsys):
    said, did = tmp_path / "said", tmp_path / "did"
    assert main(cli_args(tiny_bert, data, said, "--sweep-points", "2")) == 0
    assert main(cli_args(tiny_bert, data, did, "--method", "did", "--sweep-points", "2",
                         "--reuse", str(said), "--quiet")) == 0  # fmt: skip
    capsys.readouterr()
    said_runs = json.loads((said / "state.json").read_text())["runs"]
    did_runs = json.loads((did / "state.json").read_text())["runs"]
    full = {k: v for k, v in said_runs.items() if k.startswith("full:")}
    assert full and {k: v for k, v in did_runs.items() if k.startswith("full:")} == full
    assert {k.split(":")[0] for k in did_runs} == {"full", "did"}  # no SAID run came along
    results = json.loads((did / "results.json").read_text())
    assert results["full_metric"] == max(full.values())

    # Runs trained another way (here a shorter budget) are refused, and nothing is written.
    other = tmp_path / "other"
    args = cli_args(tiny_bert, data, other, "--method", "did", "--reuse", str(said))
    assert main([*args, "--budget-steps", "8"]) == 2
    assert "trained with other settings" in capsys.readouterr().err
    assert not other.exists()
    assert main(cli_args(tiny_bert, data, other, "--reuse", str(tmp_path / "none"))) == 2
    assert "holds no d90 search" in capsys.readouterr().err


def test_a_search_over_other_d_reuses_the_runs_and_task_files_it_shares(tiny_bert, data, tmp_path):
    """A search continued over a lower d range (say its smallest d already passed) takes the
    runs it shares with the first search, task files included, and trains only new d values."""
    train = read_table(data[0])
    dev = read_table(data[1], train.columns)
    setup = D90Setup(str(tiny_bert), budget_steps=16, batch_size=16, max_length=16)
    plan = D90Plan(min_d=400, max_d=3000, sweep_points=2, lr_grid=(0.5,), full_lr_grid=(1e-2,))
    run_d90(setup, plan, train, dev, tmp_path / "high")
    started = []
    low = run_d90(setup, replace(plan, min_d=1, max_d=400), train, dev, tmp_path / "low",
                  on_event=lambda k, d: k == "run_started" and started.append(d),
                  reuse=tmp_path / "high")  # fmt: skip
    m_plus_1 = low.plan["min_d"]
    assert [(s["kind"], s["d"]) for s in started] == [("said", m_plus_1)]  # the only new run
    assert [p.d for p in low.points] == [m_plus_1, 400]
    low_runs = json.loads((tmp_path / "low" / "state.json").read_text())["runs"]
    high_runs = json.loads((tmp_path / "high" / "state.json").read_text())["runs"]
    assert {k: low_runs[k] for k in high_runs} == high_runs
    shared = "said-d400-lr0.5.safetensors"
    assert (tmp_path / "low" / "runs" / shared).read_bytes() == (
        tmp_path / "high" / "runs" / shared
    ).read_bytes()


# Fast tests: no model and no training. `feasible` keeps the plan's range and `train_run` gives
# each run the metric of `fake.metric(kind, d, lr, seed)` and a task file naming the run.


@pytest.fixture()
def fake(monkeypatch):
    import app.search.d90 as d90

    class Fake:
        metric = staticmethod(lambda kind, d, lr, seed: 0.9 if kind == "full" else 0.5)
        trained: list[str] = []

    def train_run(setup, train, eval_, run, device="cpu", callbacks=None):
        kind, d, lr, *rest = run
        seed = rest[0] if rest else 0
        Fake.trained.append(run_key(kind, d, lr, seed))
        task = None if kind == "full" else f"{kind}-{d}-{lr:g}-{seed}".encode()
        return Fake.metric(kind, d, lr, seed), task

    monkeypatch.setattr(d90, "train_run", train_run)
    monkeypatch.setattr(d90, "feasible", lambda plan, setup, train: plan)
    monkeypatch.setattr(d90, "scale_info", lambda setup, method, train: {})  # m needs a base
    Fake.trained = []
    return Fake


def tables(data):
    train = read_table(data[0])
    return train, read_table(data[1], train.columns)


def near_bar(kind, d, lr, seed):
    """Full 0.9 (bar 0.81); from d = 1000 seed 0 fails by 0.01 at lr 0.2, within one standard
    error of 32 dev rows (0.07), and seeds 1 and 2 lift the mean to 0.83."""
    if kind == "full":
        return 0.9
    if d < 1000:
        return 0.5
    return (0.80, 0.84, 0.85)[seed] - (0 if lr == 0.2 else 0.1)


def test_killed_search_with_seeds_resumes_without_redoing_runs(fake, data, tmp_path):
    fake.metric = staticmethod(near_bar)
    train, dev = tables(data)
    setup = D90Setup("fake", budget_steps=16)
    plan = D90Plan(min_d=100, max_d=10_000, sweep_points=3, lr_grid=(0.05, 0.2),
                   full_lr_grid=(1e-2,), seeds=3)  # fmt: skip
    whole = run_d90(setup, plan, train, dev, tmp_path / "whole")

    class Killed(Exception):
        pass

    def dies_at_a_second_seed(kind, data):
        if kind == "run_finished" and data["run"].endswith(":seed=2"):
            raise Killed

    out = tmp_path / "out"
    with pytest.raises(Killed):
        run_d90(setup, plan, train, dev, out, on_event=dies_at_a_second_seed)
    finished = json.loads((out / "state.json").read_text())["runs"]
    assert {"said:d=1000:lr=0.2", "said:d=1000:lr=0.2:seed=1"} <= finished.keys()
    fake.trained.clear()
    result = run_d90(setup, plan, train, dev, out)
    assert fake.trained and not set(fake.trained) & set(finished)
    assert result.to_dict() == whole.to_dict()

    point = next(p for p in result.points if p.d == 1000)
    assert point.seeds == [0.80, 0.84, 0.85] and point.passed and point.near_bar
    assert point.stderr == pytest.approx((0.8 * 0.2 / 32) ** 0.5)
    assert result.d90 == 1000 and 1000 / result.bracket[0] <= 1.1
    runs = json.loads((out / "state.json").read_text())["runs"]
    rows = (out / "points.csv").read_text().splitlines()
    assert rows[0] == "kind,d,lr,seed,accuracy,train_accuracy,gap" and len(rows) == 1 + len(runs)
    # these fake runs' task files are not task files: no train metric or gap to show
    assert "said,1000,0.2,2,0.850000,," in rows and "said,1000,0.2,0,0.800000,," in rows
    saved = json.loads((out / "results.json").read_text())
    assert saved["points"][1]["seeds"] == [0.80, 0.84, 0.85] and saved["points"][1]["sd"] > 0
    assert (out / "runs" / "said-d1000-lr0.2-seed2.safetensors").read_bytes() == b"said-1000-0.2-2"
    assert (out / "d90-task.safetensors").read_bytes() == b"said-1000-0.2-0"  # seed 0's task


def test_a_search_folder_from_before_the_learning_rate_rule_is_not_resumed(fake, data, tmp_path):
    """An old state.json (before seeds and before the learning-rate rule: its method runs
    took other steps at every d but 1000) is refused, naming the rule and --reuse, rather than
    mixed with new runs."""
    import hashlib

    train, dev = tables(data)
    setup = D90Setup("fake", budget_steps=16, options=(("said_groups", "tensor"),))
    plan = D90Plan(min_d=100, max_d=10_000, sweep_points=3, tolerance=9.0, lr_grid=(0.2,),
                   full_lr_grid=(1e-2,))  # fmt: skip
    old_plan = {"method": "said", "min_d": 100, "max_d": 10_000, "sweep_points": 3,
                "tolerance": 9.0, "threshold": 0.9, "lr_grid": [0.2],
                "full_lr_grid": [0.01]}  # fmt: skip
    h = hashlib.sha256(json.dumps([setup.recorded_settings(), old_plan], sort_keys=True).encode())
    for table in (train, dev):
        h.update(json.dumps([table.texts, table.text_pairs, table.labels]).encode())
    assert setup.fingerprint(plan, train, dev) != h.hexdigest()  # the rule is in it now
    out = tmp_path / "old"
    out.mkdir()
    old = {"full:d=0:lr=0.01": 0.9, "said:d=100:lr=0.2": 0.5, "said:d=1000:lr=0.2": 0.85}
    state = {"fingerprint": h.hexdigest(), "runs_fingerprint": "old", "runs": old}
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(SearchMismatchError, match=r"learning-rate rule.*--reuse"):
        run_d90(setup, plan, train, dev, out)
    assert fake.trained == []


def test_results_from_before_read_and_plot():
    from app.search.curve import curve_figure
    from app.search.outputs import read_results
    from app.search.plan import upgrade_results

    folder = Path(__file__).parents[3] / "docs" / "d90"
    cola = read_results(folder / "cola-said")  # nothing passed up to 6400
    assert cola["censored"] == "right" and cola["d90_text"] == "> 6400" and cola["monotone"]
    assert cola["setup"]["metric"] == "mcc" and all(p["seeds"] for p in cola["points"])
    sst2 = read_results(folder / "sst2-said")
    assert sst2["d90"] == 416 and sst2["d90_text"] == "416" and sst2["censored"] is None
    assert sst2["bracket"] == [339, 416] and sst2["notes"] == []

    old = json.loads((folder / "sst2-said" / "results.json").read_text())
    old["points"] = [p | {"passed": True} for p in old["points"]]  # as if 150 had passed
    old["d90"], old["bracket"] = 150, None
    left = upgrade_results(old)
    assert left["censored"] == "left" and left["d90_text"] == "<= 150"
    labels = [t.get_text() for t in curve_figure(old, "accuracy").axes[0].get_legend().get_texts()]
    assert "d90 ≤ 150 (left-censored)" in labels
    assert upgrade_results({}) == {}  # a queued search's empty metrics


def test_cli_reports_censoring_and_order(fake, data, tmp_path, capsys):
    from app.search.curve import curve_figure

    fake.metric = staticmethod(lambda kind, d, lr, seed: 0.9)  # every d passes
    out = tmp_path / "left"
    assert main(cli_args("fake", data, out)) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["censored"] == "left" and summary["d90_text"] == "<= 10" and summary["monotone"]
    assert "kilotask: warning: Left-censored" in captured.err

    fake.metric = staticmethod(lambda kind, d, lr, seed: 0.9 if kind == "full" or d < 100 else 0.5)
    out = tmp_path / "order"
    assert main(cli_args("fake", data, out)) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["d90"] is None and summary["censored"] == "right"
    assert summary["monotone"] is False and summary["d90_text"] == "> 3000"
    assert "Not monotone in d: d = 10 passed (0.9000) but d = 173 failed" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["first_pass"] == 10 and results["violations"][0]["failed_d"] == 173
    legend = curve_figure(results, "accuracy").axes[0].get_legend().get_texts()
    labels = [t.get_text() for t in legend]
    assert "d90 > 3000 (right-censored)" in labels
    assert "fails above a passing d (not monotone)" in labels

    fake.metric = staticmethod(near_bar)
    out = tmp_path / "seeds"
    args = [*cli_args("fake", data, out), "--min-d", "100", "--max-d", "10000", "--seeds", "3"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["seeds"] == 3 and results["d90"] == 1000
    labels = [
        t.get_text() for t in curve_figure(results, "accuracy").axes[0].get_legend().get_texts()
    ]
    assert "mean ± sd over 3 seeds" in labels
    assert main([*cli_args("fake", data, tmp_path / "bad"), "--seeds", "0"]) == 2
    assert "--seeds must be positive" in capsys.readouterr().err


def test_a_regression_search_runs_on_pearson_with_a_zero_floor(tiny_bert, tmp_path, capsys):
    from tests.factories import rating_rows

    data = (
        write_tsv(tmp_path / "train.tsv", rating_rows(64, 0)),
        write_tsv(tmp_path / "dev.tsv", rating_rows(32, 1)),
    )
    out = tmp_path / "out"
    assert main(cli_args(tiny_bert, data, out, "--task", "regression")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert results["setup"]["metric"] == "pearson" and results["setup"]["task_type"] == "regression"
    assert summary["floor"] == results["floor"] == 0.0 and "majority" not in summary
    assert (out / "points.csv").read_text().splitlines()[
        0
    ] == "kind,d,lr,seed,pearson,train_pearson,gap"
    assert all("train_metric" in p for p in results["points"])
