"""The model registry: what a missing model says, which models count as installed, and the
recorded base digest of each installed one (a changed download is caught here)."""

import pytest

from app.engine.base import KNOWN_DIGESTS, REGISTRY, installed_models, load_base, resolve_model_path
from app.engine.errors import ModelNotFoundError


def test_a_missing_mpnet_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTASK_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model_path("mpnet-base")
    message = str(exc.value)
    assert str(tmp_path / "all-mpnet-base-v2") in message
    assert "./scripts/setup.sh" in message and "./scripts/install_mpnet.sh" in message
    assert "mpnet-base" not in installed_models()
    assert "minilm-l6" in installed_models()  # the package installed by scripts/setup.sh


def test_every_registered_model_has_a_recorded_digest():
    assert set(KNOWN_DIGESTS) == set(REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", sorted(REGISTRY))
def test_installed_weights_have_the_recorded_digest(model_id):
    if model_id not in installed_models():
        pytest.skip(f"{model_id} is not installed: run ./scripts/setup.sh")
    assert load_base(model_id, num_labels=2, seed=0).digest == KNOWN_DIGESTS[model_id]
