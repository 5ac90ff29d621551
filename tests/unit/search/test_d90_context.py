"""d90 searches never mix fp32 and bf16, or CPU and CUDA runs (issue 16): a resume, a --reuse
and a run on another worker name the difference; results.json states m and SAID's grouping."""

import json
from dataclasses import replace

import pytest

from app.engine.data import read_table
from app.search.d90 import run_d90, train_run
from app.search.plan import D90Plan, run_key
from app.search.setup import D90Setup, SearchMismatchError, resolve_setup
from tests.factories import sentiment_rows, write_tsv

PLAN = D90Plan(min_d=100, max_d=1000, sweep_points=2, lr_grid=(0.2,), full_lr_grid=(1e-2,))


@pytest.fixture()
def fake(monkeypatch):
    """No model, no training: every run scores 0.9 (full) or 0.85, and is recorded."""
    import app.search.d90 as d90

    trained = []

    def run(setup, train, eval_, run, device="cpu", callbacks=None):
        trained.append(run_key(*run[:3]))
        return (0.9 if run[0] == "full" else 0.85), None

    monkeypatch.setattr(d90, "train_run", run)
    monkeypatch.setattr(d90, "feasible", lambda plan, setup, train: plan)
    monkeypatch.setattr(d90, "scale_info", lambda setup, method, train: {"m": 4})
    return trained


@pytest.fixture()
def tables(tmp_path):
    train = read_table(write_tsv(tmp_path / "train.tsv", sentiment_rows(32, 0)))
    return train, read_table(write_tsv(tmp_path / "dev.tsv", sentiment_rows(16, 1)))


def test_resume_and_reuse_refuse_another_precision(fake, tables, tmp_path):
    train, dev = tables
    fp32 = D90Setup("fake", budget_steps=8)
    run_d90(fp32, PLAN, train, dev, tmp_path / "a")
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["context"] == {"device": "cpu", "precision": "fp32"}
    assert state["options"] == [["said_groups", "layer"]]  # SAID's grouping made explicit
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["m"] == 4 and results["setup"]["options"] == [["said_groups", "layer"]]
    bf16 = replace(fp32, precision="bf16")
    with pytest.raises(SearchMismatchError, match="precision fp32, this search uses bf16"):
        run_d90(bf16, PLAN, train, dev, tmp_path / "a")  # resume into the fp32 folder
    with pytest.raises(SearchMismatchError, match="--reuse: .*precision fp32, this search uses"):
        run_d90(bf16, PLAN, train, dev, tmp_path / "b", reuse=tmp_path / "a")
    fake.clear()
    run_d90(fp32, replace(PLAN, method="did"), train, dev, tmp_path / "c", reuse=tmp_path / "a")
    assert fake and not any(k.startswith("full") for k in fake)  # the fp32 bar is reused


def test_method_runs_of_another_grouping_are_not_reused(fake, tables, tmp_path):
    train, dev = tables
    layer = D90Setup("fake", budget_steps=8)
    run_d90(layer, PLAN, train, dev, tmp_path / "layer")
    fake.clear()
    tensor = replace(layer, options=(("said_groups", "tensor"),))
    run_d90(tensor, PLAN, train, dev, tmp_path / "tensor", reuse=tmp_path / "layer")
    # the bar is reused, the layer-grouped runs are not
    assert "said:d=100:lr=0.2" in fake and all(k.startswith("said:") for k in fake)
    fake.clear()
    run_d90(layer, PLAN, train, dev, tmp_path / "again", reuse=tmp_path / "layer")
    assert fake == []


def test_a_worker_on_another_device_type_is_refused(tables):
    train, dev = tables
    setup = resolve_setup(D90Setup("fake", budget_steps=8), "said", "cuda:1")
    assert setup.device == "cuda" and dict(setup.options) == {"said_groups": "layer"}
    with pytest.raises(SearchMismatchError, match="trains on cuda, this run would be on cpu"):
        train_run(setup, train, dev, ("said", 100, 0.2), "cpu")  # before any training
