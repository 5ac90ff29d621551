"""Export: a lowrank task as a PEFT LoRA adapter and any task as a merged HF model folder,
each loaded back by the library that reads it, to the same logits."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from app.engine.errors import SubspaceConfigError
from app.engine.export import export_task
from app.engine.reconstruct import load_task_model
from tests.factories import make_lowrank_task, make_task

IDS = torch.tensor([[2, 5, 9, 12, 3, 0], [2, 7, 8, 3, 0, 0]])
MASK = (IDS != 0).long()


def _logits(net) -> torch.Tensor:
    with torch.no_grad():
        return net(input_ids=IDS, attention_mask=MASK).logits


@pytest.mark.parametrize("scales", [True, False])
def test_peft_adapter_loads_to_the_same_logits(tiny_bert, tmp_path, scales):
    import peft  # a pinned test dependency (pyproject dev extra): never skipped

    task = make_lowrank_task(str(tiny_bert), num_labels=3, seed=4, scales=scales)
    want = _logits(load_task_model(task)[0])
    out = export_task(task, "peft", tmp_path / "adapter")
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    assert (_logits(loaded) - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["lowrank", "said", "did"])
def test_hf_folder_loads_to_the_same_logits(tiny_bert, tmp_path, kind):
    from app.engine.base import load_base

    if kind == "lowrank":
        task = make_lowrank_task(str(tiny_bert), num_labels=2, seed=1)
    else:
        base = load_base(str(tiny_bert), 2, 1)
        extra = (
            {"method": "did", "lam": None, "theta": torch.randn(100) * 20} if kind == "did" else {}
        )
        task = make_task(str(tiny_bert), base, seed=1, labels=["neg", "pos"], **extra)
    want = _logits(load_task_model(task)[0])
    out = export_task(task, "hf", tmp_path / "hf")
    net = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert (_logits(net) - want).abs().max().item() <= 1e-5
    assert net.config.id2label[1] == task.labels[1]


def test_export_refuses_what_it_cannot_write(tiny_bert, tmp_path):
    from app.engine.base import load_base

    said = make_task(str(tiny_bert), load_base(str(tiny_bert), 2, 0))
    with pytest.raises(SubspaceConfigError, match="use --format hf"):
        export_task(said, "peft", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(SubspaceConfigError, match="not an empty folder"):
        export_task(said, "hf", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
