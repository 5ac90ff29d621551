"""The kilotask command as a user runs it: separate processes, JSON on stdout, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import sentiment_rows, write_jsonl, write_tsv

KILOTASK = str(Path(sys.executable).parent / "kilotask")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([KILOTASK, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    train = write_tsv(folder / "train.tsv", sentiment_rows(64, seed=0))
    dev = write_jsonl(folder / "dev.jsonl", sentiment_rows(24, seed=1))
    out = folder / "task.safetensors"
    proc = run(
        "train",
        "--model",
        str(tiny_bert),
        "--train",
        str(train),
        "--eval",
        str(dev),
        "--method",
        "said",
        "--dim",
        "120",
        "--max-steps",
        "6",
        "--lr",
        "0.3",
        "--batch-size",
        "16",
        "--max-length",
        "16",
        "--out",
        str(out),
    )
    return folder, out, dev, proc


def test_train_prints_one_json_line_with_the_contract_fields(trained):
    _, out, _, proc = trained
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert {"eval_accuracy", "dim", "bytes", "task_digest"} <= summary.keys()
    assert summary["dim"] == 120 and summary["bytes"] == out.stat().st_size
    assert "train" in proc.stderr  # the progress bar goes to stderr


def test_predict_in_a_new_process_matches_the_reported_accuracy(trained, tiny_bert):
    _, out, dev, proc = trained
    reported = json.loads(proc.stdout)["eval_accuracy"]
    pred = run(
        "predict",
        str(out),
        "--input",
        str(dev),
        "--label-column",
        "label",
        "--model",
        str(tiny_bert),
    )
    lines = [json.loads(line) for line in pred.stdout.strip().splitlines()]
    assert len(lines) == 25
    assert set(lines[0]) == {"label", "scores"} and set(lines[0]["scores"]) == {"0", "1"}
    assert lines[-1]["accuracy"] == reported


def test_inspect_shows_metadata_and_digest(trained):
    _, out, _, proc = trained
    meta = json.loads(run("inspect", str(out)).stdout)
    assert meta["digest"] == json.loads(proc.stdout)["task_digest"]
    assert meta["spec"] == "fastfood-v1" and meta["method"] == "said" and meta["dim"] == 120
    assert meta["labels"] == ["0", "1"] and meta["text_column"] == "sentence"
    # SAID's default grouping: embeddings, 2 layers, the rest
    assert meta["said_groups"] == "layer" and meta["lambdas"] == 4


def test_said_groups_tensor_and_bf16_train_and_rebuild(trained, tiny_bert, capsys):
    """--said-groups tensor gives one λ per tensor (41 on tiny BERT) and says so in the file;
    --precision bf16 trains under autocast, and the reported metrics (measured in fp32) are
    what the rebuilt task predicts."""
    from app.cli import main

    folder, _, dev, _ = trained
    out = folder / "tensor.safetensors"
    args = ["train", "--model", str(tiny_bert), "--train", str(folder / "train.tsv"),
            "--eval", str(dev), "--dim", "120", "--max-steps", "4", "--batch-size", "16",
            "--max-length", "16", "--said-groups", "tensor", "--precision", "bf16",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    reported = json.loads(capsys.readouterr().out)["eval_accuracy"]
    assert main(["inspect", str(out)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["said_groups"], meta["lambdas"], meta["dim"]) == ("tensor", 41, 120)
    predict = ["predict", str(out), "--input", str(dev), "--label-column", "label"]
    assert main([*predict, "--model", str(tiny_bert)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] == reported


def test_said_groups_only_for_said(trained, tiny_bert, capsys):
    from app.cli import main

    folder, *_ = trained
    args = ["train", "--model", str(tiny_bert), "--train", str(folder / "train.tsv"),
            "--method", "did", "--said-groups", "tensor", "--max-length", "16",
            "--out", str(folder / "x.safetensors")]  # fmt: skip
    assert main(args) == 2
    assert "--said-groups applies to --method said, not did" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--label-column", "stars"], "stars"),
        (["--dim", "4", "--max-length", "16"], "dim must be"),  # SAID by layer: m = 4
        (["--model", "no-such-model-anywhere"], "no-such-model-anywhere"),
    ],
)
def test_bad_training_input_exits_2_with_a_message(trained, tiny_bert, extra, message):
    folder, *_ = trained
    args = ["train", "--model", str(tiny_bert), "--train", str(folder / "train.tsv")]
    proc = run(*args, "--max-steps", "1", *extra, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_headerless_file_is_refused(trained, tiny_bert, tmp_path):
    bad = tmp_path / "cola.tsv"
    bad.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n" * 3)
    proc = run("train", "--model", str(tiny_bert), "--train", str(bad), check=False)
    assert proc.returncode == 2 and "header" in proc.stderr


def test_wrong_base_and_corrupted_task_are_refused(trained, tmp_path):
    from tests.factories import make_tiny_bert

    _, out, dev, _ = trained
    other = make_tiny_bert(tmp_path / "other", seed=7)
    proc = run("predict", str(out), "--input", str(dev), "--model", str(other), check=False)
    assert proc.returncode == 2 and "digest" in proc.stderr
    broken = tmp_path / "broken.safetensors"
    data = bytearray(out.read_bytes())
    data[-2] ^= 0xFF
    broken.write_bytes(bytes(data))
    proc = run("inspect", str(broken), check=False)
    assert proc.returncode == 2 and "corrupted" in proc.stderr


def test_lowrank_train_predict_and_export(trained, tiny_bert, tmp_path):
    """kilotask train --method lowrank --rank --targets, predict agrees with the training
    metric, inspect shows rank and targets, export writes both formats, and bad options exit 2
    with one line."""
    folder, _, dev, _ = trained
    out = tmp_path / "low.safetensors"
    common = ["--model", str(tiny_bert), "--train", str(folder / "train.tsv"), "--eval", str(dev),
              "--max-steps", "6", "--batch-size", "16", "--max-length", "16"]  # fmt: skip
    proc = run("train", *common, "--method", "lowrank", "--dim", "30", "--rank", "2",
               "--targets", "query", "value", "key", "--out", str(out))  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["method"] == "lowrank" and summary["bytes"] == out.stat().st_size
    meta = json.loads(run("inspect", str(out)).stdout)
    assert (meta["spec"], meta["rank"], meta["targets"]) == ("lowrank-v2", 2, "key,query,value")
    lines = run("predict", str(out), "--input", str(dev), "--label-column", "label").stdout
    assert json.loads(lines.splitlines()[-1])["accuracy"] == summary["eval_accuracy"]
    for fmt, wanted in (("peft", "adapter_config.json"), ("hf", "config.json")):
        done = json.loads(run("export", str(out), "--format", fmt, "--out",
                              str(tmp_path / fmt)).stdout)  # fmt: skip
        assert wanted in done["files"]
    again = run("export", str(out), "--format", "hf", "--out", str(tmp_path / "hf"), check=False)
    assert again.returncode == 2 and "not an empty folder" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    bad = run("train", *common, "--method", "said", "--dim", "120", "--rank", "2",
              "--out", str(tmp_path / "x.safetensors"), check=False)  # fmt: skip
    assert bad.returncode == 2 and "rank" in bad.stderr and "Traceback" not in bad.stderr


def _fails_fast(*args: str, cwd=None) -> str:
    """Runs kilotask; it must exit 2 with one `kilotask: error:` line long before the 100,000
    training steps it was given could run. Returns that line."""
    proc = subprocess.run([KILOTASK, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kilotask: error: "), proc.stderr[-2000:]
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    "method,out,message",
    [
        ("said", "folder", "is a folder"),
        ("lowrank", "folder", "file path"),
        ("did", "missing/task.safetensors", "does not exist"),
        ("full", "t.safetensors", "model folder"),
        ("full", "file", "existing file"),
    ],
)
def test_train_checks_out_before_reading_data_or_training(
    trained, tiny_bert, tmp_path, method, out, message
):
    """A subspace task is one file: an existing folder or a missing parent folder is refused.
    Full fine-tuning writes a folder: a .safetensors name or an existing file is refused. The
    check comes first: 100,000 steps on a valid file would otherwise run for a long time."""
    folder, *_ = trained
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _fails_fast("train", "--model", str(tiny_bert), "--train", str(folder / "train.tsv"),
                       "--method", method, "--dim", "120", "--max-steps", "100000",
                       "--out", str(tmp_path / out), "--quiet")  # fmt: skip
    assert message in line and out.split("/")[0] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (tmp_path / "file").read_text() == "keep me" and not any((tmp_path / "folder").iterdir())


def test_train_checks_out_even_before_the_train_file(tmp_path):
    line = _fails_fast("train", "--train", str(tmp_path / "absent.tsv"),
                       "--out", str(tmp_path))  # fmt: skip
    assert "is a folder" in line and "absent" not in line


def test_full_default_out_is_a_folder_name(trained, tiny_bert, tmp_path):
    """Without --out, --method full writes the folder task-model (not a folder named
    task.safetensors); an existing file of that name is refused up front."""
    folder, *_ = trained
    (tmp_path / "task-model").write_text("x")
    line = _fails_fast("train", "--model", str(tiny_bert), "--train", str(folder / "train.tsv"),
                       "--method", "full", "--max-steps", "100000", cwd=tmp_path)  # fmt: skip
    assert "task-model" in line


def test_export_refuses_a_file_name_or_existing_file_for_out(trained, tmp_path):
    _, out, _, _ = trained
    line = _fails_fast(
        "export", str(out), "--format", "hf", "--out", str(tmp_path / "m.safetensors")
    )
    assert "folder" in line and not (tmp_path / "m.safetensors").exists()
    (tmp_path / "file").write_text("keep me")
    line = _fails_fast("export", str(out), "--format", "hf", "--out", str(tmp_path / "file"))
    assert "not an empty folder" in line and (tmp_path / "file").read_text() == "keep me"


def test_regression_train_and_predict_in_new_processes(tiny_bert, tmp_path):
    """--task regression trains one output and reports Pearson; `kilotask predict` in another
    process prints {"score": x} per row and the same Pearson. Without --task, a numeric label
    column exits 2 with one line naming the flag."""
    from tests.factories import rating_rows

    train = write_tsv(tmp_path / "train.tsv", rating_rows(160, seed=0))
    dev = write_tsv(tmp_path / "dev.tsv", rating_rows(40, seed=1))
    common = ["train", "--model", str(tiny_bert), "--train", str(train), "--eval", str(dev),
              "--label-column", "score", "--dim", "200", "--max-steps", "30", "--eval-every",
              "15", "--batch-size", "16", "--max-length", "16", "--lr", "0.5",
              "--quiet"]  # fmt: skip
    refused = run(*common, "--out", str(tmp_path / "x.safetensors"), check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "--task regression" in refused.stderr and "Traceback" not in refused.stderr
    wrong = run(*common, "--task", "regression", "--metric", "accuracy", check=False)
    assert wrong.returncode == 2 and "pearson, spearman" in wrong.stderr
    out = tmp_path / "rating.safetensors"
    summary = json.loads(run(*common, "--task", "regression", "--out", str(out)).stdout)
    assert {"eval_pearson", "eval_spearman", "eval_mse", "train_pearson", "gap"} <= set(summary)
    lines = run("predict", str(out), "--input", str(dev), "--label-column", "score").stdout
    rows = [json.loads(line) for line in lines.splitlines()]
    assert len(rows) == 41 and all(set(r) == {"score"} for r in rows[:40])
    assert rows[-1]["pearson"] == pytest.approx(summary["eval_pearson"], abs=1e-4)
    assert rows[-1]["rows"] == 40
    inspected = json.loads(run("inspect", str(out)).stdout)
    assert inspected["task_type"] == "regression" and len(inspected["target_stats"]) == 2
