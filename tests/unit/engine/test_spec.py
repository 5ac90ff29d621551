"""Golden vectors for the fastfood-v1 generator. If one of these fails, stored tasks no longer
rebuild: bump SPEC_VERSION instead of editing the numbers."""

import numpy as np
import pytest
import torch

from app.engine import spec
from app.engine.fastfood import FastfoodProjection


def test_mix32_golden():
    x = np.array([0, 1, 2, 0xFFFFFFFF], dtype=np.uint32)
    assert spec.mix32(x).tolist() == [0, 2261973619, 229111015, 2578835075]


def test_streams_golden():
    assert spec.random_bits(0, spec.STREAM_G, 0, 4).tolist() == [
        3702473080,
        2256554312,
        445055080,
        1736900632,
    ]
    assert spec.signs(1, spec.STREAM_B, 8).tolist() == [-1, -1, 1, -1, -1, -1, 1, 1]
    assert spec.permutation(3, spec.STREAM_PI, 8).tolist() == [4, 0, 5, 1, 3, 2, 7, 6]
    torch.testing.assert_close(
        spec.gaussians(7, spec.STREAM_G, 5),
        torch.tensor(
            [
                0.5516945123672485,
                0.49787452816963196,
                0.019106287509202957,
                0.8095072507858276,
                0.40277260541915894,
            ]
        ),
        rtol=0,
        atol=0,
    )


def test_projection_golden():
    p = FastfoodProjection(5, 2000, 42, dtype=torch.float64)
    y = p.forward(torch.arange(1.0, 6.0, dtype=torch.float64))
    expected = [
        0.03734174162334941,
        0.0990091857584013,
        0.045230435300474645,
        -0.20039844059655607,
        -0.2814654009282783,
        0.20638991519749356,
    ]
    torch.testing.assert_close(y[:6], torch.tensor(expected, dtype=torch.float64))
    assert y.sum().item() == pytest.approx(-15.142749402456408, rel=1e-12)


def test_counter_based_slices_agree():
    whole = spec.random_bits(9, spec.STREAM_G, 0, 1000)
    assert (spec.random_bits(9, spec.STREAM_G, 300, 200) == whole[300:500]).all()


def test_chunked_threaded_gaussians_match_unchunked(monkeypatch):
    whole = spec.gaussians(5, spec.STREAM_G, 10_000)
    monkeypatch.setattr(spec, "_CHUNK", 1000)
    torch.testing.assert_close(spec.gaussians(5, spec.STREAM_G, 10_000), whole, rtol=0, atol=0)


def test_gaussian_table_moments():
    t = spec.gaussian_table().double()
    assert abs(t.mean().item()) < 1e-9
    assert (t * t).mean().item() == pytest.approx(1.0, abs=1e-6)


def test_seeds_are_independent_and_validated():
    a, b = spec.random_bits(1, spec.STREAM_G, 0, 64), spec.random_bits(2, spec.STREAM_G, 0, 64)
    assert (a != b).mean() > 0.9
    with pytest.raises(ValueError, match="seed"):
        spec.random_bits(-1, spec.STREAM_G, 0, 4)
