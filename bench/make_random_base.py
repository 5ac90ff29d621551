"""Write a random-init model folder with real architecture shapes, for benchmarks only.

Usage: python bench/make_random_base.py --arch bert-base --tokenizer TOKENIZER_DIR --out DIR
Weights are random (no hub access needed); the tokenizer is copied so the folder loads as a
base model. Speed depends on shapes only, so this stands in for the pretrained checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

ARCHS = {
    "bert-base": lambda: BertModel(BertConfig()),
    "roberta-large": lambda: RobertaModel(
        RobertaConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            vocab_size=50265,
            max_position_embeddings=514,
        )
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(ARCHS), required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    ARCHS[args.arch]().save_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.out)


if __name__ == "__main__":
    main()
