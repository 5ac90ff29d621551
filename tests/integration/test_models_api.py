"""GET /v1/models lists the registered models installed here and leaves the others out."""

import pytest

from app.engine.base import KNOWN_DIGESTS, installed_models

pytestmark = pytest.mark.slow  # loads each listed model once per process


def listed(client, auth) -> dict[str, dict]:
    r = client.get("/v1/models", headers=auth)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


def test_a_registered_model_not_installed_is_left_out(client, auth, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTASK_MODELS_DIR", str(tmp_path / "no-models"))
    assert list(listed(client, auth)) == ["minilm-l6"]


def test_an_installed_mpnet_is_listed_with_its_size_scales_and_digest(client, auth):
    if "mpnet-base" not in installed_models():
        pytest.skip("mpnet-base is not installed: run ./scripts/install_mpnet.sh")
    model = listed(client, auth)["mpnet-base"]
    assert model["num_parameters"] == 109_488_002
    assert model["said_scales"] == {"layer": 14, "tensor": 201}
    assert model["base_digest"] == KNOWN_DIGESTS["mpnet-base"]
    assert model["max_length"] == 512
