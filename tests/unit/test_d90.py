"""A tiny d90 search end to end (tiny BERT, tiny data): the files it writes, a resume after a
kill that redoes no finished run, and refusal to mix settings in one folder."""

import json
from dataclasses import replace

import pytest

from app.cli import main
from app.d90 import D90Setup, SearchMismatchError, run_d90
from app.engine.artifact import TaskArtifact
from app.engine.data import read_table
from app.engine.intrinsic import D90Plan
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
        "--full-lr-grid", "1e-2", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_d90_cli_writes_results_csv_plot_and_task(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(cli_args(tiny_bert, data, out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] and summary["d90"] == results["d90"]
    assert not results["degenerate"] and results["bar"] > results["floor"]  # full FT learned
    assert results["bar"] == pytest.approx(0.9 * results["full_metric"])
    m = results["plan"]["min_d"] - 1  # SAID's range starts above its number of scales
    assert results["plan"]["min_d"] > 10 and m > 0
    runs = json.loads((out / "state.json").read_text())["runs"]
    rows = (out / "points.csv").read_text().splitlines()
    assert rows[0] == "kind,d,lr,accuracy" and len(rows) == 1 + len(runs)
    assert len(runs) == 1 + 2 * len(results["points"])  # full once, then 2 learning rates per d
    for point in results["points"]:
        assert point["passed"] == (point["metric"] >= results["bar"])
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
    plan = D90Plan(min_d=10, max_d=3000, sweep_points=3, lr_grid=(0.2, 0.5), full_lr_grid=(1e-2,))
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
    assert main(cli_args(tiny_bert, data, tmp_path / "b", "--max-d", "20")) == 2
    assert "SAID needs d >" in capsys.readouterr().err


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
