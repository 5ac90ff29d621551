import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "data" in item.keywords and not GLUE.is_dir():
            item.add_marker(
                pytest.mark.skip(reason=f"GLUE data not found at {GLUE} (set GLUE_DIR)")
            )


@pytest.fixture(scope="session", autouse=True)
def models_dir(tmp_path_factory) -> Path:
    """Tests build their tiny models under pytest's temporary folder, so that folder becomes
    the models folder (KILOTASK_MODELS_DIR, which the service lets tenants name folders under;
    servers the tests start inherit it). The installed models (mpnet-base) are linked into it,
    so the tests that use them still find them."""
    installed = Path(os.environ.get("KILOTASK_MODELS_DIR", Path.home() / ".kilotask" / "models"))
    root = tmp_path_factory.getbasetemp()
    if installed.is_dir():
        for entry in installed.iterdir():
            link = root / entry.name
            if not link.exists():
                link.symlink_to(entry.resolve())
    os.environ["KILOTASK_MODELS_DIR"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from tests.factories import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return GLUE
