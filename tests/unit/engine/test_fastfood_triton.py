"""The Triton projection equals the reference: in Triton's interpreter on CPU (always), and
compiled on CUDA (skipped without a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]


def run_check(device: str, interpret: bool) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.engine.triton_check", device],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_matches(results: list[dict]) -> None:
    assert len(results) == 3 and [r["J"] for r in results] == [1, 4, 1]
    for r in results:
        assert r["shape_ok"], r
        assert r["forward_err"] < 1e-5 and r["transpose_err"] < 1e-5, r
        assert r["adjoint_gap"] < 1e-5, r
        assert r["state_bytes"] == r["state_bytes_at_1000x_D"]  # nothing D-sized is kept


def test_triton_kernels_match_reference_in_interpreter():
    assert_matches(run_check("cpu", interpret=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_kernels_match_reference_on_cuda():
    assert_matches(run_check("cuda", interpret=False))
