"""max_length is checked against what the base takes (its position embeddings and tokenizer):
at job and search creation (422), in the CLI (exit 2), at task import (422); prediction with a
file asking for more truncates to what the base takes. The tiny BERT has 64 positions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.engine.artifact import TaskArtifact
from app.engine.data import read_table
from app.engine.pipeline import predict_task
from tests.factories import sentiment_rows, write_tsv
from tests.integration.test_d90_api import search_body
from tests.integration.test_jobs_api import body, make_task_bytes

KILOTASK = str(Path(sys.executable).parent / "kilotask")


def test_jobs_and_searches_refuse_a_max_length_past_the_positions(client, auth, dataset, tiny_bert):
    r = client.post("/v1/jobs", json=body(tiny_bert, dataset, hyperparameters={"max_length": 65}),
                    headers=auth)  # fmt: skip
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_max_length" and "at most 64 tokens" in error["message"]
    ok = client.post("/v1/jobs", json=body(tiny_bert, dataset, hyperparameters={"max_length": 64}),
                     headers=auth)  # fmt: skip
    assert ok.status_code == 202, ok.text
    search = client.post("/v1/intrinsic-dimension", headers=auth,
                         json=search_body(tiny_bert, dataset, max_length=2002))  # fmt: skip
    assert search.status_code == 422 and search.json()["error"]["code"] == "invalid_max_length"


def test_a_task_file_asking_for_more_positions_is_refused_at_import(client, auth, tiny_bert):
    data = make_task_bytes(tiny_bert, max_length=100)
    r = client.post("/v1/tasks", files={"file": ("t.safetensors", data)}, headers=auth)
    assert r.status_code == 422, r.text
    assert "max_length 100" in r.json()["error"]["message"]


def test_predict_truncates_to_what_the_base_takes(tiny_bert, tmp_path):
    task = TaskArtifact.from_bytes(make_task_bytes(tiny_bert, max_length=100))
    long_rows = [{"sentence": " ".join(["good"] * 300), "label": "1"}] + sentiment_rows(3)
    rows = read_table(write_tsv(tmp_path / "rows.tsv", long_rows))
    assert len(predict_task(task, rows).labels) == 4


def test_the_cli_refuses_it_before_training(tiny_bert, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(32))
    proc = subprocess.run(
        [KILOTASK, "train", "--model", str(tiny_bert), "--train", str(train), "--dim", "120",
         "--max-steps", "100000", "--max-length", "2002", "--out", str(tmp_path / "t.safetensors")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "at most 64 tokens" in lines[0], proc.stderr
