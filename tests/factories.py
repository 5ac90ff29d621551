"""Test inputs: a tiny random-init BERT saved as a local HF folder, small data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

WORDS = [
    "good",
    "great",
    "fine",
    "nice",
    "love",
    "bad",
    "awful",
    "poor",
    "hate",
    "dull",
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "is",
    "was",
    "very",
    "not",
    "so",
]
POSITIVE, NEGATIVE = WORDS[:5], WORDS[5:10]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary, saved to `folder`. Its weights
    come from torch's RNG under `seed`: fine for tests, which only need *some* fixed base."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).bert.save_pretrained(folder)  # encoder only
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows whose label is decided by the sentiment words in them: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        pool = POSITIVE if label else NEGATIVE
        words = [rng.choice(pool)] + rng.sample(WORDS[10:], 3) + [rng.choice(pool)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": str(label)})
    return rows


def rating_rows(n: int, seed: int = 0) -> list[dict]:
    """Regression rows: the score (a float, 0 to 4.9) is the number of positive words among
    four sentiment words, plus a little noise, so that it is learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positives = rng.randint(0, 4)
        words = rng.sample(POSITIVE, positives) + rng.sample(NEGATIVE, 4 - positives)
        words += rng.sample(WORDS[10:], 2)
        rng.shuffle(words)
        score = positives + rng.random() * 0.9
        rows.append({"sentence": " ".join(words), "score": f"{score:.3f}"})
    return rows


def write_tsv(path: Path, rows: list[dict]) -> Path:
    cols = list(rows[0])
    lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_task(model_id: str, base, dim: int = 100, **overrides):
    """A SAID TaskArtifact for `base` (a loaded BaseModel) with random θ and λ = 1; any field
    can be overridden (e.g. method="did", lam=None, theta=...)."""
    from app.engine.artifact import TaskArtifact

    m = len(list(base.model.parameters()))
    fields = dict(
        model=model_id,
        base_digest=base.digest,
        seed=0,
        method="said",
        dim=dim,
        D=base.num_parameters,
        labels=["0", "1"],
        text_column="sentence",
        text_pair_column=None,
        max_length=16,
        theta=torch.randn(dim - m),
        lam=torch.ones(m),
    )
    fields.update(overrides)
    return TaskArtifact(**fields)


def make_lowrank_task(
    model_id: str,
    num_labels: int = 2,
    seed: int = 0,
    dim: int | None = None,
    rank: int = 4,
    targets: tuple[str, ...] | None = None,
    scales: bool = True,
    gen_seed: int = 0,
    spec: str = "lowrank-v2",
    **overrides,
):
    """A lowrank TaskArtifact for the base at `model_id` with random θ (and λ near 1); with
    num_labels=1 a regression task (targets of mean 2.5 and std 1.5). d defaults to 60, or the
    largest d the spec allows on the base below that."""
    from app.engine.artifact import TaskArtifact
    from app.engine.base import load_base
    from app.engine.lowrank import LowRankConfig, LowRankModel
    from app.engine.lowrank.layout import dim_range, layout_for

    base = load_base(model_id, num_labels, seed)
    config = LowRankConfig(dim or 60, seed, rank, targets, scales, spec)
    if dim is None:
        dim = min(60, dim_range(layout_for(base.model, base.seeded, config))[1])
        config = LowRankConfig(dim, seed, rank, targets, scales, spec)
    model = LowRankModel(base.model, base.seeded, config)
    gen = torch.Generator().manual_seed(gen_seed)
    m = model.layout.num_scales
    fields = dict(
        model=model_id,
        base_digest=base.digest,
        seed=seed,
        method="lowrank",
        dim=dim,
        D=model.D,
        labels=[str(k) for k in range(num_labels)] if num_labels > 1 else [],
        text_column="sentence",
        text_pair_column=None,
        max_length=16,
        theta=torch.randn(model.d_proj, generator=gen) * 3,
        lam=1 + 0.2 * torch.randn(m, generator=gen) if m else None,
        spec=spec,
        **model.artifact_fields(),
    )
    if num_labels == 1:
        fields.update(task_type="regression", target_stats=[2.5, 1.5])
    fields.update(overrides)
    return TaskArtifact(**fields)
